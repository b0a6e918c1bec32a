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
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from dask_gateway_server.utils import FrozenAttrDict, TaskPool, normalize_address
from traitlets import default

from ..commands import (
    CERT_FILE,
    KEY_FILE,
    worker_env,
)
from ..config import ConfigError
from ..periodic import run_periodically
from .base import (
    Check,
    ClusterFacts,
    KnownRecords,
    Launcher,
    LauncherContext,
    LauncherUnavailable,
    Phase,
    log_tail,
)
from .exit_reasons import last_lines
from .htcondor_quoting import (
    UnsafeValue,
    arguments_value,
    check_accounting_user,
    classad_string,
    constraint_string,
    environment_value,
    submit_literal,
)
from .htcondor_settings import HTCondorSettings
from .htcondor_status import (
    PROJECTION,
    JobInfo,
    QueryResult,
    changes_constraint,
    count_is_plausible,
    mark_removed,
    merge_changes,
    parse_ads,
)
from .local_isolation import read_tail
from .staging import write_credentials
from .worker_network import batch_worker_command

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

#: Stands for ``$(worker_name)`` in a worker's arguments until they are quoted: the one
#: macro the gateway means. (A user argument equal to it would only become the worker's
#: name; every other ``$`` is literal.)
WORKER_NAME = "\0worker_name\0"
LOG_BYTES = 1_000_000  # per output file and fetch; the gateway's store caps again

#: Launchers that set HTCondor's ``SEC_TOKEN_DIRECTORY``, which is process-wide
#: configuration: pools of one gateway cannot each have their own.
_TOKEN_DIRECTORY_SETTERS: weakref.WeakSet[HTCondorLauncher] = weakref.WeakSet()


class HTCondorLauncher(HTCondorSettings, Launcher):
    """Workers as HTCondor jobs through the ``htcondor2`` bindings (workers only)."""

    kind = "htcondor"

    @default("scheduler_address")
    def _default_scheduler_address(self) -> str:
        address = normalize_address(self.context.proxy_tls_address, resolve_host=True)
        return "tls://" + address

    # -- lifecycle ------------------------------------------------------------------
    async def setup(self, context: LauncherContext) -> None:
        await super().setup(context)
        if self.idtoken_directory:
            self._set_token_directory()
        os.makedirs(self.staging_directory, mode=0o700, exist_ok=True)
        self._schedd = None
        self.jobs: dict[str, JobInfo] = {}  # worker name -> job, from the last query
        self.cache_time = 0.0  # when the cache was last refreshed successfully
        self.schedd_error = ""  # the last schedd failure, cleared on success
        self._removals: list[Any] = []  # job specs whose removal must be retried
        self._status_delay = self.status_period  # longer after failures
        self._since: int | None = None  # schedd clock of the last query; None: query all
        self._last_full = 0.0  # when all jobs were last queried
        self._removed_since: set[str] = set()  # workers whose jobs this gateway removed
        self._submitted = 0  # jobs submitted since the last query began
        self._tasks = TaskPool()
        run_periodically(
            self._tasks,
            self._status_step,
            lambda: self._status_delay,
            self.log,
            f"HTCondor status update ({context.name or self.kind})",
        )

    async def cleanup(self) -> None:
        _TOKEN_DIRECTORY_SETTERS.discard(self)
        tasks = getattr(self, "_tasks", None)
        if tasks is not None:
            await tasks.close()

    def _set_token_directory(self) -> None:
        """Point HTCondor at ``idtoken_directory``, refusing a second one in this process."""
        for other in _TOKEN_DIRECTORY_SETTERS:
            if other is not self and other.idtoken_directory != self.idtoken_directory:
                raise ConfigError(
                    f"HTCondor launchers {other.context.name!r} and {self.context.name!r} set "
                    f"different HTCondorLauncher.idtoken_directory ({other.idtoken_directory!r}, "
                    f"{self.idtoken_directory!r}), but HTCondor reads the token directory from "
                    "process-wide configuration: give every HTCondor pool of this gateway the "
                    "same one (it may hold several tokens)"
                )
        import htcondor2

        htcondor2.param["SEC_TOKEN_DIRECTORY"] = self.idtoken_directory
        _TOKEN_DIRECTORY_SETTERS.add(self)

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
        return await self._in_thread(
            method, lambda schedd: getattr(schedd, method)(*args, **kwargs)
        )

    async def _in_thread(self, what: str, work: Callable[[Any], Any]) -> Any:
        """``work(schedd)`` in a thread, with ``schedd_timeout``; failures: LauncherUnavailable."""

        def run():
            if self._schedd is None:
                self._schedd = self._locate()
            return work(self._schedd)

        try:
            async with asyncio.timeout(self.schedd_timeout):
                result = await asyncio.to_thread(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._schedd = None  # locate again next time: the schedd may have moved
            self.schedd_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise LauncherUnavailable(f"schedd {what} failed: {self.schedd_error}") from exc
        return result

    async def _query(self, constraint: str) -> QueryResult:
        """One query, its ads read into ``JobInfo`` in the same thread (not on the loop)."""
        return await self._in_thread(
            "query", lambda schedd: parse_ads(schedd.query(constraint, PROJECTION))
        )

    def _instance_constraint(self, cluster_name: str | None = None) -> str:
        constraint = f"DaskGatewayInstance == {constraint_string(self.gateway_id)}"
        if cluster_name is not None:
            constraint += f" && DaskGatewayCluster == {constraint_string(cluster_name)}"
        return constraint

    async def _status_step(self) -> None:
        """One ``refresh``; after a failure the next one waits twice as long (up to a minute)."""
        try:
            await self.refresh()
        except Exception as exc:
            self._status_delay = min(self._status_delay * 2, max(60.0, self.status_period))
            if not isinstance(exc, LauncherUnavailable):
                raise  # logged with its traceback by run_periodically
            self.log.warning(
                "HTCondor status update (%s) failed, retrying: %s",
                self.context.name or self.kind,
                exc,
            )
        else:
            self._status_delay = self.status_period

    async def refresh(self, known: KnownRecords | None = None) -> int:
        """One query for this gateway's changed jobs, one lease renewal, retried removals.

        The query asks only for jobs that changed since the previous one
        (``htcondor_status``), except every ``status_full_period`` and when the
        lease renewal matched another number of jobs than the cache holds: then
        for all of them. Jobs of workers without a record in ``known`` (default:
        the gateway's records now) are removed too: a submit that timed out but
        went through, jobs of a gateway that restarted. Returns how many such
        jobs were removed.
        """
        started = time.time()
        self._submitted = 0
        if not await self._query_changes(started):
            await self._query_all(started)
        self.cache_time = started
        self.schedd_error = ""
        known = self.context.known_records() if known is None else known
        stray = [job for job in self.jobs.values() if job.worker not in known.workers]
        if stray:
            self.log.warning(
                "Removing %d HTCondor jobs with no worker record (%s)",
                len(stray),
                self.context.name or self.kind,
            )
            await self._remove([job.job_id for job in stray], [job.worker for job in stray])
        if self.jobs:
            expires = int(time.time() + self.lease_duration)
            matched = await self._call(
                "edit", self._instance_constraint(), "DaskGatewayLeaseExpires", str(expires)
            )
            if not count_is_plausible(matched, self.jobs, self._removed_since, self._submitted):
                self._since = None  # jobs left the queue unseen: ask for all next time
        if self._removals:
            pending, self._removals = self._removals, []
            for spec in pending:
                await self._remove(spec)
        return len(stray)

    async def _query_changes(self, now: float) -> bool:
        """Fold the jobs changed since the last query into the cache; False: a full one is due."""
        if self._since is None or now - self._last_full >= self.status_full_period:
            return False
        changes = await self._query(changes_constraint(self._instance_constraint(), self._since))
        mark_removed(self.jobs, self._removed_since)
        self._removed_since.clear()
        merge_changes(self.jobs, changes)
        if changes.server_time is not None:
            self._since = changes.server_time
        return True

    async def _query_all(self, now: float) -> None:
        """Replace the cache with every job of this gateway."""
        result = await self._query(self._instance_constraint())
        self.jobs = result.jobs
        mark_removed(self.jobs, self._removed_since)
        self._removed_since.clear()
        self._last_full = now
        # Without the schedd's clock, there is no "since": every query stays a full one.
        self._since = result.server_time

    async def _remove(self, spec: Any, workers: Sequence[str] = ()) -> None:
        """Remove jobs (ids or a constraint); the cache expects ``workers``' jobs to leave."""
        import htcondor2

        try:
            await self._call("act", htcondor2.JobAction.Remove, spec, self.remove_reason)
        except LauncherUnavailable:
            self._removals.append(spec)  # retried every status period; the lease is the backstop
            raise
        self._removed_since.update(workers)

    # -- per-cluster files -------------------------------------------------------------
    def cluster_directory(self, cluster: Cluster) -> str:
        return os.path.join(self.staging_directory, cluster.name)

    def _stage_credentials(self, cluster: Cluster) -> tuple[str, str]:
        """The cluster's TLS files in its private directory, for jobs to transfer."""
        directory = self.cluster_directory(cluster)
        os.makedirs(os.path.join(directory, "logs"), mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        return write_credentials(cluster, directory)

    # -- submit description ------------------------------------------------------------
    def check_cluster_request(
        self, username: str, options: Mapping[str, Any], config: Any, facts: ClusterFacts
    ) -> None:
        """Refuse, at creation, a cluster whose jobs could not be submitted exactly.

        Builds the submit description a batch of its workers would get, so a user
        name or cluster option HTCondor cannot receive (see ``htcondor_quoting``) is
        a clear refusal now rather than failed scale-ups later.
        """
        if hasattr(config, "to_dict"):
            config = FrozenAttrDict(config.to_dict())
        probe = SimpleNamespace(name="0" * 32, username=username, options=options, config=config)
        self.submit_description(probe, CERT_FILE, KEY_FILE, facts)

    def submit_description(
        self, cluster: Cluster, cert_path: str, key_path: str, facts: ClusterFacts
    ) -> dict[str, str]:
        """The submit commands shared by all procs of one batch (``$(worker_name)`` varies).

        Every value is escaped for the submit language (and ClassAd strings for
        ClassAd), or refused with ``UnsafeValue``; only ``extra_submit`` is verbatim.
        """
        config = cluster.config
        # Transferred files land in the job's scratch directory, its working directory.
        env = worker_env(cluster, cert_path=CERT_FILE, key_path=KEY_FILE)
        env.update({k: str(v) for k, v in self.environment.items()})
        args = batch_worker_command(self, cluster, WORKER_NAME)
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
        image = config.get("image") or self.container_image
        if config.get("image") and self.container_mode == "none":
            raise UnsafeValue(
                f"the image {config['image']!r} of profile {config.get('profile')!r} cannot "
                "run in this pool: it runs jobs without containers "
                "(HTCondorLauncher.container_mode = 'none'); choose a profile without an "
                "image or another pool"
            )
        if image and self.container_mode == "container":
            desc["universe"] = "container"
            desc["container_image"] = submit_literal(image, "container_image")
        elif image and self.container_mode == "apptainer":
            desc["+SingularityImage"] = classad_string(image)
        if self.use_accounting_group and facts.accounting_group:
            pattern = re.compile(self.accounting_user_pattern)
            user = check_accounting_user(cluster.username, pattern)
            what = f"the accounting_group of VO {facts.vo}"
            desc["accounting_group"] = submit_literal(facts.accounting_group, what)
            desc["accounting_group_user"] = user
        desc.update({k: str(v) for k, v in self.extra_submit.items()})
        return desc

    # -- workers --------------------------------------------------------------------------
    async def start_workers(
        self, cluster: Cluster, workers: Sequence[Worker], facts: ClusterFacts
    ) -> list[dict[str, Any]]:
        import htcondor2

        cert_path, key_path = self._stage_credentials(cluster)
        submit = htcondor2.Submit(self.submit_description(cluster, cert_path, key_path, facts))
        itemdata = [{"worker_name": w.name} for w in workers]
        result = await self._call("submit", submit, itemdata=iter(itemdata))
        cluster_id, first = result.cluster(), result.first_proc()
        self._submitted += len(workers)
        submitted = time.time()
        return [
            {"job_id": f"{cluster_id}.{first + i}", "submitted": submitted}
            for i in range(len(workers))
        ]

    async def stop_workers(self, workers: Sequence[Worker]) -> None:
        ids = [w.state["job_id"] for w in workers if "job_id" in w.state]
        if ids:
            await self._remove(ids, [w.name for w in workers if "job_id" in w.state])

    async def stop_cluster_workers(self, cluster: Cluster, workers: Sequence[Worker]) -> None:
        try:
            names = [w.name for w in workers]
            await self._remove(self._instance_constraint(cluster.name), names)
        finally:
            shutil.rmtree(self.cluster_directory(cluster), ignore_errors=True)

    def _why(self, worker: Worker) -> str:
        """The last lines the worker wrote to stderr, if the job's log reached us."""
        path = os.path.join(
            self.cluster_directory(worker.cluster), "logs", f"worker-{worker.name}.err"
        )
        tail = last_lines(log_tail(path))
        return f"; last log lines: {tail}" if tail else ""

    async def fetch_logs(
        self, cluster: Cluster, workers: Sequence[Worker], scheduler: bool = False
    ) -> dict[str, str]:
        """The jobs' output and error files, as far as HTCondor has brought them back."""
        directory, out = self.cluster_directory(cluster), {}
        for w in workers:
            parts = [
                read_tail(directory, "logs", f"worker-{w.name}.{ext}", os.geteuid(), LOG_BYTES)
                for ext in ("out", "err")
            ]
            text = "\n".join(p for p in parts if p)
            if text:
                out[w.name] = text
        return out

    async def check_workers(self, workers: Sequence[Worker]) -> list[Check]:
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
                    out.append(Check(Phase.PENDING, why))
                else:
                    reason = "the job left the schedd queue" + self._why(w)
                    out.append(Check(Phase.FAILED, reason))
            elif job.check is not None:
                out.append(job.check)  # made once per job change, when the ad was read
            else:
                ended = f" ({job.ended})" if job.ended else ""
                out.append(Check(Phase.FAILED, f"the job ended{ended}" + self._why(w)))
        return out

    async def count_unknown(self, known: KnownRecords) -> int:
        """Jobs of this gateway in the queue whose worker has no record in ``known``."""
        try:
            await self._query_all(time.time())
        except LauncherUnavailable as exc:
            self.log.warning("Cannot count HTCondor jobs now (%s)", exc)
            return 0
        return sum(1 for job in self.jobs.values() if job.worker not in known.workers)

    async def remove_unknown(self, known: KnownRecords) -> int:
        """``refresh`` removes jobs without records; run it now instead of a period later."""
        try:
            return await self.refresh(known)
        except LauncherUnavailable as exc:
            self.log.warning("Cannot reconcile HTCondor jobs now (%s); retrying each period", exc)
            return 0
