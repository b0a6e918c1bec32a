"""Dask workers as HTCondor jobs, submitted, tracked and removed by the gateway.

One submit transaction per scale step (k procs, one per worker, named through
itemdata); one schedd query per status period for every job of this gateway,
feeding a cache that all status checks read; one batched ``edit`` per period
renewing a lease that each job's ``periodic_remove`` checks, so jobs die even
if the gateway does. Workers reach their scheduler through the gateway proxy's
public TLS address with SNI ``daskgateway-<cluster>``; their TLS files travel
as encrypted transfer-input files from a private per-cluster directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from dask_gateway_server.traitlets import Callable as CallableTrait
from dask_gateway_server.utils import FrozenAttrDict, normalize_address
from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)

from ..commands import CERT_FILE, KEY_FILE, proxy_sni, worker_command, worker_env
from .base import Launcher, LauncherUnavailable, WorkerCheck, WorkerPhase, log_tail
from .htcondor_quoting import (
    UnsafeValue,
    arguments_value,
    check_accounting_user,
    check_literal,
    classad_string,
    constraint_string,
    environment_value,
    submit_literal,
)

# JobStatus values (htcondor2.JobStatus)
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)

MAX_REASON = 300  # characters of a hold/idle reason kept per job

PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "DaskGatewayCluster",
    "DaskGatewayWorker",
    "HoldReason",
    "EnteredCurrentStatus",
    "LastRejMatchReason",
]


@dataclass(frozen=True)
class JobInfo:
    """What the status cache knows about one job."""

    job_id: str
    cluster: str
    worker: str
    status: int
    hold_reason: str = ""
    why_idle: str = ""


#: Stands for ``$(worker_name)`` in a worker's arguments until they are quoted: the one
#: macro the gateway means. (A user argument equal to it would only become the worker's
#: name; every other ``$`` is literal.)
WORKER_NAME = "\0worker_name\0"


class HTCondorLauncher(Launcher):
    """Workers as HTCondor jobs through the ``htcondor2`` bindings (workers only)."""

    kind = "htcondor"

    schedd_name = Unicode(
        "",
        help="Name of the schedd to submit to. Empty: the local schedd of this machine.",
        config=True,
    )

    collector = Unicode(
        "",
        help="Collector (host[:port]) used to locate ``schedd_name``. Empty: from HTCondor config.",
        config=True,
    )

    schedd_factory = CallableTrait(
        None,
        allow_none=True,
        help="""
        A callable returning an ``htcondor2.Schedd``-like object, instead of
        locating one by ``schedd_name``/``collector``. For custom location
        logic and for testing against a stand-in.
        """,
        config=True,
    )

    idtoken_directory = Unicode(
        "",
        help="""
        Directory holding the IDTOKEN(s) the gateway authenticates to the schedd
        with (sets HTCondor's ``SEC_TOKEN_DIRECTORY`` for this process). Empty:
        HTCondor's own configuration decides.
        """,
        config=True,
    )

    scheduler_address = Unicode(
        help="""
        The gateway proxy's TLS address as execute nodes see it, e.g.
        ``tls://gateway.example.org:8786``. Workers connect there with SNI
        ``daskgateway-<cluster>``. Defaults to the proxy's own TCP address,
        which only works when execute nodes share the gateway's network.
        """,
        config=True,
    )

    @default("scheduler_address")
    def _default_scheduler_address(self) -> str:
        proxy = self.backend.proxy
        return "tls://" + normalize_address(proxy.tcp_address, resolve_host=True)

    worker_executable = Unicode(
        "/usr/bin/env",
        help="""
        Executable of worker jobs, run in place (``transfer_executable = false``);
        the cluster's ``worker_cmd`` (default ``dask worker``) is its arguments,
        so ``/usr/bin/env`` finds ``dask`` on the job's PATH.
        """,
        config=True,
    )

    worker_host = Unicode(
        "",
        help="Address workers listen on (``--host``). Empty: distributed's default interface.",
        config=True,
    )

    container_mode = CaselessStrEnum(
        ["none", "container", "apptainer"],
        default_value="none",
        help="""
        How ``container_image`` runs: ``container`` uses the container universe
        (``container_image``), ``apptainer`` sets ``+SingularityImage`` as OSG
        and most HEP pools expect, ``none`` runs on the execute node directly.
        """,
        config=True,
    )

    container_image = Unicode(
        "", help="The worker image (e.g. a /cvmfs path or docker:// URL).", config=True
    )

    request_disk = Unicode("1 GB", help="``request_disk`` of worker jobs.", config=True)

    environment = Dict(
        {},
        help="""
        Extra, non-secret environment variables of worker jobs (visible in the job
        ad). Values are passed literally: ``$`` is not an HTCondor macro here, and a
        value with a line break, ``$$`` or ``$(DOLLAR)`` is refused at start-up.
        """,
        config=True,
    )

    extra_submit = Dict(
        {},
        help="""
        Extra submit commands for site policy, e.g. ``{"requirements":
        "OpSysMajorVer == 9", "+DESIRED_Sites": '"T2_US_Nebraska"'}``. The only
        values written verbatim (macros expand, ClassAd strings need their quotes):
        never put user-controlled text here.
        """,
        config=True,
    )

    staging_directory = Unicode(
        help="""
        Directory under which each cluster gets a private (0700) directory with
        the TLS files its jobs transfer as encrypted input files, and job logs.
        """,
        config=True,
    )

    @default("staging_directory")
    def _default_staging_directory(self) -> str:
        return os.path.join(os.path.expanduser("~"), ".elastic-gateway", "htcondor")

    @validate("staging_directory")
    def _validate_staging_directory(self, proposal):
        # transfer_input_files is a comma-separated list: HTCondor would split the
        # path and hold every job with a transfer failure.
        if "," in proposal.value:
            raise TraitError(
                f"HTCondorLauncher.staging_directory {proposal.value!r} contains a comma, "
                "which HTCondor's transfer_input_files cannot express; choose a path without one"
            )
        return proposal.value

    gateway_id = Unicode(
        "elastic-gateway",
        help="""
        Value of the ``DaskGatewayInstance`` attribute on every job of this
        gateway; queries, leases and clean-ups select by it. Gateways sharing
        a schedd must use different values. It must stay the same across
        restarts (a restarted gateway finds its jobs by it), so the default is
        a fixed name, not the host name, which changes when the gateway moves.
        """,
        config=True,
    )

    status_period = Float(
        5.0,
        help="Seconds between the one schedd query (and one lease renewal) for all jobs.",
        config=True,
    )

    lease_duration = Float(
        600.0,
        help="""
        Seconds a job lives without the gateway renewing its lease. A job whose
        lease lapsed (the gateway is gone) is removed by its ``periodic_remove``.
        """,
        config=True,
    )

    held_job_timeout = Float(
        600.0,
        help="Seconds a held job stays before its own ``periodic_remove`` removes it.",
        config=True,
    )

    schedd_timeout = Float(30.0, help="Seconds before a schedd call counts as failed.", config=True)

    remove_reason = Unicode(
        "removed by Elastic Gateway", help="Reason recorded on jobs the gateway removes."
    )

    worker_extra_args = List(
        [],
        help="""
        Extra arguments of ``dask worker`` (e.g. ``--contact-address``), passed
        literally like ``environment`` values.
        """,
        config=True,
    )

    nanny = Bool(
        False,
        help="""
        Run a Nanny in worker jobs. Off by default: distributed's Nanny does not
        send ``--scheduler-sni`` when it registers, so it cannot reach a
        scheduler through the gateway proxy; HTCondor enforces the job's memory
        and the gateway replaces failed workers, which is what a Nanny adds.
        """,
        config=True,
    )

    use_accounting_group = Bool(
        True,
        help="Set ``accounting_group``/``accounting_group_user`` from the cluster's VO.",
        config=True,
    )

    accounting_user_pattern = Unicode(
        r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}",
        help="""
        Regular expression the whole user name of a cluster's owner must match to
        become its jobs' ``accounting_group_user`` (only when the cluster's VO has an
        ``accounting_group``). Others are refused when they create a cluster, with
        a message naming this setting. The default, letters, digits, ``_`` and
        ``-`` (at most 64), leaves out ``.``, because HTCondor reads
        ``AccountingGroup`` (``<group>.<user>``) up to its last dot as the group, so
        a user named ``sub.alice`` would be charged to the subgroup
        ``<group>.sub``, and ``@``, which ends the group part of a submitter name.
        Widen it (e.g. for e-mail-like names) only where no subgroups exist. Whatever
        it allows, names with whitespace, control characters, ``$`` or non-ASCII
        characters are refused.
        """,
        config=True,
    )

    @validate("accounting_user_pattern")
    def _validate_accounting_user_pattern(self, proposal):
        try:
            re.compile(proposal.value)
        except re.error as exc:
            raise TraitError(
                f"HTCondorLauncher.accounting_user_pattern {proposal.value!r} is not a "
                f"regular expression: {exc}"
            ) from None
        return proposal.value

    @validate("environment", "worker_extra_args", "container_image")
    def _validate_literal_settings(self, proposal):
        # Admin values reach the submit description too: refused here, naming the key.
        name, value = proposal.trait.name, proposal.value
        try:
            if name == "environment":
                environment_value({k: str(v) for k, v in value.items()})
            elif name == "worker_extra_args":
                arguments_value([str(a) for a in value])
            else:
                check_literal(value, "the image")
        except UnsafeValue as exc:
            raise TraitError(f"HTCondorLauncher.{name}: {exc}") from None
        return value

    # -- lifecycle ------------------------------------------------------------------
    async def setup(self, backend) -> None:
        await super().setup(backend)
        if self.idtoken_directory:
            import htcondor2

            htcondor2.param["SEC_TOKEN_DIRECTORY"] = self.idtoken_directory
        os.makedirs(self.staging_directory, mode=0o700, exist_ok=True)
        self._schedd = None
        self.jobs: dict[str, JobInfo] = {}  # worker name -> job, from the last query
        self.cache_time = 0.0  # when the cache was last refreshed successfully
        self.schedd_error = ""  # the last schedd failure, cleared on success
        self._removals: list[Any] = []  # job specs whose removal must be retried
        self._loop_task = asyncio.ensure_future(self._status_loop())

    async def cleanup(self) -> None:
        task = getattr(self, "_loop_task", None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- schedd access -------------------------------------------------------------------
    def _locate(self):
        if self.schedd_factory is not None:
            return self.schedd_factory()
        import htcondor2

        if not self.schedd_name and not self.collector:
            return htcondor2.Schedd()
        collector = htcondor2.Collector(self.collector or None)
        ad = collector.locate(htcondor2.DaemonType.Schedd, self.schedd_name or None)
        return htcondor2.Schedd(ad)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One blocking schedd call off the event loop; failures become LauncherUnavailable."""

        def run():
            if self._schedd is None:
                self._schedd = self._locate()
            return getattr(self._schedd, method)(*args, **kwargs)

        try:
            async with asyncio.timeout(self.schedd_timeout):
                result = await asyncio.to_thread(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._schedd = None  # locate again next time: the schedd may have moved
            self.schedd_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise LauncherUnavailable(f"schedd {method} failed: {self.schedd_error}") from exc
        return result

    def _instance_constraint(self, cluster_name: str | None = None) -> str:
        constraint = f"DaskGatewayInstance == {constraint_string(self.gateway_id)}"
        if cluster_name is not None:
            constraint += f" && DaskGatewayCluster == {constraint_string(cluster_name)}"
        return constraint

    async def _status_loop(self) -> None:
        delay = self.status_period
        while True:
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except LauncherUnavailable as exc:
                self.log.warning("HTCondor status update failed, retrying: %s", exc)
                delay = min(delay * 2, max(60.0, self.status_period))
            except Exception:
                self.log.exception("HTCondor status update failed")
                delay = min(delay * 2, max(60.0, self.status_period))
            else:
                delay = self.status_period

    def _known_workers(self) -> set[str]:
        return {
            w.name
            for c in self.backend.db.active_clusters()
            for w in c.workers.values()
            if w.is_active()
        }

    async def refresh(self) -> None:
        """One query for all of this gateway's jobs, one lease renewal, retried removals.

        Jobs of workers the database does not know (a submit that timed out but
        went through, a gateway restart) are removed here too.
        """
        started = time.time()
        ads = await self._call("query", self._instance_constraint(), PROJECTION)
        jobs = {}
        for ad in ads:
            info = JobInfo(
                job_id=f"{ad['ClusterId']}.{ad['ProcId']}",
                cluster=str(ad.get("DaskGatewayCluster", "")),
                worker=str(ad.get("DaskGatewayWorker", "")),
                status=int(ad.get("JobStatus", IDLE)),
                hold_reason=str(ad.get("HoldReason", ""))[:MAX_REASON],
                why_idle=str(ad.get("LastRejMatchReason", ""))[:MAX_REASON],
            )
            jobs[info.worker] = info
        self.jobs = jobs
        self.cache_time = started
        self.schedd_error = ""
        known = self._known_workers()
        stray = [job.job_id for job in jobs.values() if job.worker not in known]
        if stray:
            self.log.warning("Removing %d HTCondor jobs with no worker record", len(stray))
            await self._remove(stray)
        if jobs:
            expires = int(time.time() + self.lease_duration)
            await self._call(
                "edit", self._instance_constraint(), "DaskGatewayLeaseExpires", str(expires)
            )
        if self._removals:
            pending, self._removals = self._removals, []
            for spec in pending:
                await self._remove(spec)

    async def _remove(self, spec: Any) -> None:
        import htcondor2

        try:
            await self._call("act", htcondor2.JobAction.Remove, spec, self.remove_reason)
        except LauncherUnavailable:
            self._removals.append(spec)  # retried every status period; the lease is the backstop
            raise

    # -- per-cluster files -------------------------------------------------------------
    def cluster_directory(self, cluster) -> str:
        return os.path.join(self.staging_directory, cluster.name)

    def _stage_credentials(self, cluster) -> tuple[str, str]:
        directory = self.cluster_directory(cluster)
        os.makedirs(os.path.join(directory, "logs"), mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        paths = []
        for name, data in ((CERT_FILE, cluster.tls_cert), (KEY_FILE, cluster.tls_key)):
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(path)
        return paths[0], paths[1]

    # -- submit description ------------------------------------------------------------
    def check_cluster_request(self, username: str, options: Mapping[str, Any], config) -> None:
        """Refuse, at creation, a cluster whose jobs could not be submitted exactly.

        Builds the submit description a batch of its workers would get, so a user
        name or cluster option HTCondor cannot receive (see ``htcondor_quoting``) is
        a clear refusal now rather than failed scale-ups later.
        """
        if hasattr(config, "to_dict"):
            config = FrozenAttrDict(config.to_dict())
        probe = SimpleNamespace(name="0" * 32, username=username, options=options, config=config)
        self.submit_description(probe, CERT_FILE, KEY_FILE)

    def submit_description(self, cluster, cert_path: str, key_path: str) -> dict[str, str]:
        """The submit commands shared by all procs of one batch (``$(worker_name)`` varies).

        Every value is escaped for the submit language (and ClassAd strings for
        ClassAd), or refused with ``UnsafeValue``; only ``extra_submit`` is verbatim.
        """
        config = cluster.config
        # Transferred files land in the job's scratch directory, its working directory.
        env = worker_env(cluster, cert_path=CERT_FILE, key_path=KEY_FILE)
        env.update({k: str(v) for k, v in self.environment.items()})
        args = worker_command(
            cluster,
            WORKER_NAME,
            self.scheduler_address,
            host=self.worker_host or "",
            scheduler_sni=proxy_sni(cluster),
        )
        if not self.worker_host:
            i = args.index("--host")
            del args[i : i + 2]
            args[args.index("--dashboard-address") + 1] = ":0"
        if not self.nanny:
            args.append("--no-nanny")
        args += list(self.worker_extra_args)
        logs = os.path.join(self.cluster_directory(cluster), "logs")
        desc = {
            "universe": "vanilla",
            "executable": self.worker_executable,
            "transfer_executable": "false",
            "arguments": arguments_value(args, {WORKER_NAME: "$(worker_name)"}),
            "environment": environment_value(env),
            "should_transfer_files": "YES",
            "when_to_transfer_output": "ON_EXIT",
            "transfer_input_files": f"{cert_path},{key_path}",
            "encrypt_input_files": f"{CERT_FILE},{KEY_FILE}",
            "output": os.path.join(logs, "worker-$(worker_name).out"),
            "error": os.path.join(logs, "worker-$(worker_name).err"),
            "request_cpus": str(config.worker_cores),
            "request_memory": str(max(1, int(config.worker_memory) // 2**20)),
            "request_disk": self.request_disk,
            "+DaskGatewayInstance": classad_string(self.gateway_id),
            "+DaskGatewayCluster": classad_string(cluster.name),
            "+DaskGatewayWorker": '"$(worker_name)"',
            "+DaskGatewayLeaseExpires": str(int(time.time() + self.lease_duration)),
            "periodic_remove": (
                "(time() > DaskGatewayLeaseExpires) || (JobStatus == 5 && "
                f"time() - EnteredCurrentStatus > {int(self.held_job_timeout)})"
            ),
            "job_lease_duration": str(int(self.lease_duration)),
        }
        gpus = config.get("worker_gpus", 0)
        if gpus:
            desc["request_gpus"] = str(gpus)
        if self.container_image and self.container_mode == "container":
            desc["universe"] = "container"
            desc["container_image"] = submit_literal(self.container_image, "container_image")
        elif self.container_image and self.container_mode == "apptainer":
            desc["+SingularityImage"] = classad_string(self.container_image)
        vo = self.backend.vo_of(cluster)
        if self.use_accounting_group and vo is not None and vo.accounting_group:
            pattern = re.compile(self.accounting_user_pattern)
            user = check_accounting_user(cluster.username, pattern)
            what = f"the accounting_group of VO {vo.name}"
            desc["accounting_group"] = submit_literal(vo.accounting_group, what)
            desc["accounting_group_user"] = user
        desc.update({k: str(v) for k, v in self.extra_submit.items()})
        return desc

    # -- workers --------------------------------------------------------------------------
    async def start_workers(self, cluster, workers) -> list[dict[str, Any]]:
        import htcondor2

        cert_path, key_path = self._stage_credentials(cluster)
        submit = htcondor2.Submit(self.submit_description(cluster, cert_path, key_path))
        itemdata = [{"worker_name": w.name} for w in workers]
        result = await self._call("submit", submit, itemdata=iter(itemdata))
        cluster_id, first = result.cluster(), result.first_proc()
        submitted = time.time()
        return [
            {"job_id": f"{cluster_id}.{first + i}", "submitted": submitted}
            for i in range(len(workers))
        ]

    async def stop_workers(self, workers) -> None:
        ids = [w.state["job_id"] for w in workers if "job_id" in w.state]
        if ids:
            await self._remove(ids)

    async def stop_cluster_workers(self, cluster, workers) -> None:
        try:
            await self._remove(self._instance_constraint(cluster.name))
        finally:
            shutil.rmtree(self.cluster_directory(cluster), ignore_errors=True)

    def _why(self, worker) -> str:
        """The last line the worker wrote to stderr, if the job's log reached us."""
        path = os.path.join(
            self.cluster_directory(worker.cluster), "logs", f"worker-{worker.name}.err"
        )
        lines = log_tail(path).splitlines()
        return f": {lines[-1]}" if lines else ""

    async def check_workers(self, workers) -> list[WorkerCheck]:
        """Answered from the status cache: no schedd call per check."""
        out = []
        for w in workers:
            job = self.jobs.get(w.name)
            if job is None:
                submitted = w.state.get("submitted", 0)
                if self.cache_time <= submitted or self.schedd_error:
                    why = "waiting for the schedd to list the job"
                    if self.schedd_error:
                        why = f"schedd unreachable ({self.schedd_error})"
                    out.append(WorkerCheck(WorkerPhase.PENDING, why))
                else:
                    reason = "the job left the schedd queue" + self._why(w)
                    out.append(WorkerCheck(WorkerPhase.FAILED, reason))
            elif job.status == HELD:
                out.append(WorkerCheck(WorkerPhase.FAILED, f"job held: {job.hold_reason}"))
            elif job.status in (REMOVED, COMPLETED):
                out.append(WorkerCheck(WorkerPhase.FAILED, "the job ended" + self._why(w)))
            elif job.status == RUNNING:
                out.append(WorkerCheck(WorkerPhase.RUNNING))
            else:
                why = "idle in the schedd queue, waiting for a slot"
                if job.why_idle:
                    why += f" ({job.why_idle})"
                out.append(WorkerCheck(WorkerPhase.PENDING, why))
        return out

    async def remove_unknown(self, known_clusters: set[str], known_workers: set[str]) -> int:
        """``refresh`` removes jobs without records; run it now instead of a period later."""
        try:
            before = len(self.jobs)
            await self.refresh()
        except LauncherUnavailable as exc:
            self.log.warning("Cannot reconcile HTCondor jobs now (%s); retrying each period", exc)
            return 0
        return max(0, before - len(self.jobs))
