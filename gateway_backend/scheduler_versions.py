"""A scheduler preload: say clearly when client, scheduler and workers run different software.

Since distributed 2023.4 the scheduler unpickles task graphs, and every worker
unpickles tasks: a notebook or a worker environment with another ``distributed``,
``cloudpickle``, ``msgpack`` or Python minor version fails later with an
unpickling traceback nobody can read. This compares the versions where the
mismatch is made, when a client connects and when a worker registers, and
says which versions differ and what to do: a warning (mode ``warn``) or a
refusal (mode ``refuse``: the client's ``Client()`` raises with the message,
the worker is removed). Each mismatch is reported to the gateway as structured
data; the gateway writes the event text.

A client hears it through distributed's own channel: the scheduler's answer to
``register-client`` carries ``warning`` (shown as ``VersionMismatchWarning``)
or ``error`` (raised), made by ``distributed.versions.error_message``, which
this preload wraps for clients.

Like ``scheduler_checks``, the gateway passes this file's text as ``--preload``:
it may import only distributed, tornado and the standard library.
"""

import asyncio
import logging
import os

import distributed.versions as versions_module
from distributed.diagnostics.plugin import SchedulerPlugin

logger = logging.getLogger("elastic_gateway.versions")

# What must agree for pickled graphs, tasks and results to travel (Python: minor version).
CHECKED = ("python", "dask", "distributed", "cloudpickle", "msgpack")

# Also the words of the gateway's events (``scheduler_reports`` imports them).
ADVICE = {
    "client": (
        "pick the profile whose environment matches your notebook (gateway.profiles() "
        "lists them), or install the scheduler's versions in your notebook's environment"
    ),
    "worker": (
        "the workers' environment differs from the scheduler's: ask the administrators "
        "to fix the profile's image or Python environment, or pick another profile"
    ),
}


def comparable(versions: dict | None) -> dict:
    """``{package: version}`` of the checked packages from distributed's ``get_versions()``."""
    packages = (versions or {}).get("packages") or {}
    out = {}
    for pkg in CHECKED:
        value = packages.get(pkg)
        if value is None:
            out[pkg] = "missing"
        elif pkg == "python":
            out[pkg] = ".".join(str(value).split(".")[:2])
        else:
            out[pkg] = str(value)
    return out


def mismatches(theirs: dict | None, ours: dict | None) -> dict:
    """``{package: [theirs, ours]}`` for each checked package whose versions differ."""
    a, b = comparable(theirs), comparable(ours)
    return {pkg: [a[pkg], b[pkg]] for pkg in CHECKED if a[pkg] != b[pkg]}


def mismatch_text(role: str, differences: dict, refused: bool) -> str:
    """One message: which versions differ, what happened and what to do."""
    listed = "; ".join(
        f"{pkg} {theirs} on the {role} but {ours} on the scheduler"
        for pkg, (theirs, ours) in differences.items()
    )
    outcome = "refused" if refused else "allowed, but tasks may fail to unpickle"
    return f"Version mismatch ({listed}): the {role} was {outcome}. To fix: {ADVICE[role]}."


class VersionCheck(SchedulerPlugin):
    """Compare each client's and worker's versions with the scheduler's; report, maybe refuse."""

    name = "elastic-gateway-versions"

    def __init__(self, scheduler, mode, report, own_versions):
        self.scheduler = scheduler
        self.refuse = mode == "refuse"
        self.report = report
        self.own = own_versions
        self._tasks = set()

    def client_message(self, client_versions: dict | None) -> dict | None:
        """``{"warning", "error"}`` for a connecting client, or None when versions agree."""
        differences = mismatches(client_versions, self.own)
        if not differences:
            return None
        text = mismatch_text("client", differences, self.refuse)
        return {"warning": "", "error": text} if self.refuse else {"warning": text, "error": ""}

    def add_client(self, scheduler, client):
        state = scheduler.clients.get(client)
        differences = mismatches(getattr(state, "versions", None), self.own)
        if differences:
            self._send({"kind": "version_mismatch", "role": "client", "packages": differences})

    def add_worker(self, scheduler, worker):
        ws = scheduler.workers.get(worker)
        if ws is None:
            return
        differences = mismatches(ws.versions, self.own)
        if not differences:
            return
        logger.warning("Worker %s: %s", ws.name, mismatch_text("worker", differences, self.refuse))
        finding = {"kind": "version_mismatch", "role": "worker", "packages": differences}
        self._send({**finding, "worker": str(ws.name)})
        if self.refuse:
            self._track(
                scheduler.remove_worker(
                    address=worker, stimulus_id="elastic-gateway-version-mismatch", close=True
                )
            )

    def _send(self, finding):
        self._track(self._report({**finding, "refused": self.refuse}))

    def _track(self, coro):
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, finding):
        try:
            await self.report(finding)
        except Exception:
            logger.warning("Could not tell the gateway about a version mismatch", exc_info=True)

    async def close(self):
        for task in list(self._tasks):
            task.cancel()


def answer_clients_with(check: VersionCheck) -> None:
    """Make the scheduler's answer to a connecting client carry our message.

    ``Scheduler.add_client`` builds that answer with ``error_message``; workers'
    answers (another ``source_name``) stay distributed's own.
    """
    original = versions_module.error_message

    def error_message(scheduler, workers, source, source_name="Client"):
        if source_name == "Client":
            ours = check.client_message(source)
            if ours is not None:
                return ours
        return original(scheduler, workers, source, source_name)

    versions_module.error_message = error_message


def dask_setup(scheduler):
    mode = os.environ.get("ELASTIC_GATEWAY_VERSION_MISMATCH", "warn")
    link = scheduler.extensions["elastic-gateway"]  # scheduler_link, the first preload
    check = VersionCheck(scheduler, mode, link.report, versions_module.get_versions())
    answer_clients_with(check)
    scheduler.add_plugin(check)
