"""Dask workers as Slurm jobs, submitted, tracked and cancelled by the gateway.

One ``sbatch`` per scale step (a job array, task ``i`` running the step's
``i``-th worker); one ``squeue`` per status period for every job of this
gateway, feeding a cache that all status checks read; ``scancel`` of exactly the
chosen array tasks. Jobs are named ``gateway_id`` and their comment names the
cluster and the batch, so a restarted gateway adopts what runs and cancels
strays from that one query. Each cluster's staging directory (0700, on a file
system the compute nodes share) holds its TLS files and a lease file the gateway
touches every period; a job whose lease lapsed stops its worker, so jobs end by
themselves when the gateway is gone. Workers reach their scheduler through the
gateway proxy's TLS address with SNI ``daskgateway-<cluster>``. With
``slurmrestd_url`` set the same three operations go to slurmrestd (``rest.py``)
instead of the commands (``client.py``); nothing else differs.

Slurm keeps 1024 characters of a comment, too few for a big array's worker
names: the comment names a batch, and ``<staging>/<cluster>/batches/<batch>``
lists its workers (written before ``sbatch``, read once per batch).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from dask_gateway_server.utils import FrozenAttrDict, TaskPool, normalize_address
from traitlets import default

from ...commands import (
    CERT_FILE,
    KEY_FILE,
    worker_env,
)
from ...periodic import run_periodically
from ..base import (
    Check,
    ClusterFacts,
    KnownRecords,
    Launcher,
    LauncherContext,
    LauncherUnavailable,
    Phase,
    log_tail,
)
from ..local_isolation import read_tail
from ..staging import write_credentials, write_private_file
from ..worker_network import batch_worker_command
from .client import JobRecord, SlurmClient, SlurmRefused
from .rest import SlurmRestClient, job_properties
from .script import (
    WORKER_NAME,
    WorkerJob,
    check_word,
    job_comment,
    parse_comment,
    render,
    submitter_id,
)
from .settings import SlurmSettings
from .status import job_check

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

LOG_BYTES = 1_000_000  # per output file and fetch; the gateway's store caps again


@dataclass(frozen=True)
class JobInfo:
    """What the status cache knows about one worker's array task."""

    cluster: str
    worker: str
    record: JobRecord


class SlurmLauncher(SlurmSettings, Launcher):
    """Workers as Slurm jobs through ``sbatch``/``squeue``/``scancel`` or slurmrestd."""

    kind = "slurm"

    @default("scheduler_address")
    def _default_scheduler_address(self) -> str:
        address = normalize_address(self.context.proxy_tls_address, resolve_host=True)
        return "tls://" + address

    @property
    def submitter(self) -> str:
        """Whose jobs this instance tells and cancels: its gateway and staging directory."""
        return submitter_id(self.gateway_id, self.staging_directory)

    # -- lifecycle ------------------------------------------------------------------
    async def setup(self, context: LauncherContext) -> None:
        await super().setup(context)
        os.makedirs(self.staging_directory, mode=0o700, exist_ok=True)
        os.chmod(self.staging_directory, 0o700)
        self.client: SlurmClient | SlurmRestClient
        if self.slurmrestd_url:
            for option in self.extra_sbatch:  # slurmrestd takes no #SBATCH line: refuse now
                job_properties(f"#!/bin/bash\n#SBATCH {option}\n")
            self.client = SlurmRestClient(
                self.slurmrestd_url,
                self.command_timeout,
                self.slurmrestd_token_file,
                self.slurmrestd_user,
            )
        else:
            self.client = SlurmClient(
                self.bin_directory, self.slurm_conf, self.command_timeout, self.status_query
            )
        self.jobs: dict[str, JobInfo] = {}  # worker name -> its task, from the last query
        self._batches: dict[tuple[str, str], list[str]] = {}  # (cluster, batch) -> workers
        self.cache_time = 0.0  # when the cache was last refreshed successfully
        self.slurm_error = ""  # the last failure to reach slurmctld, cleared on success
        self._cancels: list[str] = []  # job ids whose scancel must be retried
        self._status_delay = self.status_period  # longer after failures
        self._tasks = TaskPool()
        run_periodically(
            self._tasks,
            self._status_step,
            lambda: self._status_delay,
            self.log,
            f"Slurm status update ({context.name or self.kind})",
        )

    async def cleanup(self) -> None:
        tasks = getattr(self, "_tasks", None)
        if tasks is not None:
            await tasks.close()
        if isinstance(getattr(self, "client", None), SlurmRestClient):
            await self.client.close()

    # -- status ---------------------------------------------------------------------------
    async def _status_step(self) -> None:
        """Renew leases, then one ``refresh``; after a failure the next waits twice as long."""
        self.renew_leases(self.context.known_records().clusters)
        try:
            await self.refresh()
        except Exception as exc:
            self._status_delay = min(self._status_delay * 2, max(60.0, self.status_period))
            if not isinstance(exc, LauncherUnavailable):
                raise  # logged with its traceback by run_periodically
            self.slurm_error = str(exc)
            self.log.warning(
                "Slurm status update (%s) failed, retrying in %.0fs: %s",
                self.context.name or self.kind,
                self._status_delay,
                exc,
            )
        else:
            self._status_delay = self.status_period

    def renew_leases(self, clusters: frozenset[str] | set[str]) -> None:
        """Touch the lease file of every live cluster staged here (no Slurm call).

        Independent of slurmctld: an outage of the controller must not end the
        jobs of a gateway that is still there.
        """
        now = time.time()
        for name in clusters:
            try:
                os.utime(os.path.join(self.staging_directory, name, "lease"), (now, now))
            except FileNotFoundError:
                pass  # not a cluster of this pool, or stopped meanwhile

    async def refresh(self, known: KnownRecords | None = None) -> int:
        """One ``squeue`` for all of this gateway's jobs; strays cancelled, cancels retried.

        Tasks of workers without a record in ``known`` (default: the gateway's
        records now) are cancelled: an ``sbatch`` that timed out but went through,
        jobs of a gateway that restarted. Returns how many were cancelled.
        """
        started = time.time()
        records = await self.client.jobs(self.gateway_id)
        jobs = {}
        unnamed = []  # tasks of this gateway whose worker cannot be told: strays
        for record in records:
            parsed = parse_comment(record.comment, self.submitter)
            if parsed is None:
                continue
            names = self.batch_workers(*parsed)
            if record.task < len(names):
                jobs[names[record.task]] = JobInfo(parsed[0], names[record.task], record)
            elif record.active:
                unnamed.append(record.job_id)
        self.jobs = jobs
        self.cache_time = started
        self.slurm_error = ""
        known = self.context.known_records() if known is None else known
        stray = unnamed + [
            info.record.job_id
            for info in jobs.values()
            if info.record.active and info.worker not in known.workers
        ]
        if stray:
            self.log.warning(
                "Cancelling %d Slurm jobs with no worker record (%s)",
                len(stray),
                self.context.name or self.kind,
            )
        retry, self._cancels = self._cancels, []
        await self._cancel(sorted(set(stray + retry)))
        return len(stray)

    async def _cancel(self, job_ids: Sequence[str]) -> None:
        try:
            await self.client.cancel(job_ids)
        except LauncherUnavailable:
            self._cancels += job_ids  # retried every status period; the lease is the backstop
            raise

    # -- per-cluster files -------------------------------------------------------------
    def cluster_directory(self, cluster_name: str) -> str:
        return os.path.join(self.staging_directory, cluster_name)

    def batch_workers(self, cluster_name: str, batch: str) -> list[str]:
        """The worker names of one job array, from memory or its file (empty: unknown)."""
        key = (cluster_name, batch)
        if key not in self._batches:
            path = os.path.join(self.cluster_directory(cluster_name), "batches", batch)
            try:
                with open(path) as f:
                    self._batches[key] = f.read().split()
            except OSError:
                return []  # not (or no longer) staged here: the job's workers are unknown
        return self._batches[key]

    def _stage(self, cluster: Cluster) -> str:
        """The cluster's private directory: TLS files, a fresh lease, a log directory."""
        directory = self.cluster_directory(cluster.name)
        for sub in ("logs", "batches"):
            os.makedirs(os.path.join(directory, sub), mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        write_credentials(cluster, directory)
        lease = os.path.join(directory, "lease")
        with open(os.open(lease, os.O_WRONLY | os.O_CREAT, 0o600), "wb"):
            pass
        os.utime(lease)
        return directory

    # -- batch scripts ---------------------------------------------------------------------
    def account_of(self, facts: ClusterFacts) -> str:
        """The ``--account`` of a VO's jobs (see ``vo_accounts``); empty for Slurm's default."""
        account = self.vo_accounts.get(facts.vo or "", "")
        if not account and self.account_from_accounting_group:
            account = facts.accounting_group or ""
        account = account or self.account
        return check_word(account, f"the Slurm account of VO {facts.vo}", empty=True)

    def worker_job(
        self, cluster: Cluster, workers: Sequence[str], facts: ClusterFacts, batch: str
    ) -> WorkerJob:
        """What the batch script of ``workers`` of ``cluster`` says, from settings and config."""
        config = cluster.config
        env = worker_env(cluster, cert_path=CERT_FILE, key_path=KEY_FILE)  # in the job's cwd
        env.update({k: str(v) for k, v in self.environment.items()})
        args = batch_worker_command(self, cluster, WORKER_NAME)
        return WorkerJob(
            job_name=self.gateway_id,
            comment=job_comment(self.submitter, cluster.name, cluster.username, batch),
            workers=list(workers),
            stage=self.cluster_directory(cluster.name),
            cores=int(config.worker_cores),
            memory_bytes=int(config.worker_memory),
            gpus=int(config.get("worker_gpus", 0) or 0),
            environment=env,
            command=args,
            lease_duration=self.lease_duration,
            options={
                "partition": self.partition,
                "account": self.account_of(facts),
                "qos": self.qos,
                "constraint": self.constraint,
                "time": self.time_limit,
            },
            extra=list(self.extra_sbatch),
            gpu_gres=self.gpu_gres,
        )

    def check_cluster_request(
        self, username: str, options: Mapping[str, Any], config: Any, facts: ClusterFacts
    ) -> None:
        """Refuse, at creation, a cluster whose batch script could not be written exactly.

        Renders the script a batch of its workers would get, so an environment
        name or value a shell cannot carry, or a VO account that is not a Slurm
        word, is a clear 422 now rather than failed scale-ups later.
        """
        if hasattr(config, "to_dict"):
            config = FrozenAttrDict(config.to_dict())
        if config.get("image"):
            raise ValueError(
                f"the image {config['image']!r} of profile {config.get('profile')!r} cannot "
                "run in a Slurm pool: its jobs run on the nodes' own software; choose a "
                "profile without an image or another pool"
            )
        probe = SimpleNamespace(name="0" * 32, username=username, options=options, config=config)
        render(self.worker_job(probe, ["0" * 32], facts, "0" * 16))

    # -- workers --------------------------------------------------------------------------
    async def start_workers(
        self, cluster: Cluster, workers: Sequence[Worker], facts: ClusterFacts
    ) -> list[dict[str, Any]]:
        """One ``sbatch`` (a job array) per ``max_array_size`` workers."""
        self._stage(cluster)
        names = [w.name for w in workers]
        states = []
        step = max(1, self.max_array_size)
        for first in range(0, len(names), step):
            chunk = names[first : first + step]
            batch = secrets.token_hex(8)
            script = render(self.worker_job(cluster, chunk, facts, batch))
            path = os.path.join(self.cluster_directory(cluster.name), "batches", batch)
            write_private_file(path, "\n".join(chunk).encode())
            self._batches[(cluster.name, batch)] = chunk
            try:
                array_id = await self.client.submit(script)
            except SlurmRefused as exc:
                raise RuntimeError(f"Slurm refused the worker jobs: {exc}") from None
            submitted = time.time()
            states += [
                {"job_id": f"{array_id}_{i}", "submitted": submitted} for i in range(len(chunk))
            ]
        return states

    async def stop_workers(self, workers: Sequence[Worker]) -> None:
        """``scancel`` exactly these workers' array tasks, in one call."""
        ids = [w.state["job_id"] for w in workers if "job_id" in w.state]
        if ids:
            await self._cancel(ids)

    async def stop_cluster_workers(self, cluster: Cluster, workers: Sequence[Worker]) -> None:
        """Cancel every array of the cluster (also tasks without a record), then its files."""
        arrays = {
            info.record.array_id for info in self.jobs.values() if info.cluster == cluster.name
        }
        arrays |= {w.state["job_id"].split("_")[0] for w in workers if "job_id" in w.state}
        try:
            await self._cancel(sorted(arrays))
        finally:
            shutil.rmtree(self.cluster_directory(cluster.name), ignore_errors=True)
            for key in [k for k in self._batches if k[0] == cluster.name]:
                del self._batches[key]

    def _why(self, worker: Worker) -> str:
        """The last line the job wrote, if its log is still there."""
        job_id = worker.state.get("job_id", "")
        path = os.path.join(
            self.cluster_directory(worker.cluster.name), "logs", f"slurm-{job_id}.out"
        )
        lines = log_tail(path).splitlines()
        return lines[-1] if lines else ""

    async def fetch_logs(
        self, cluster: Cluster, workers: Sequence[Worker], scheduler: bool = False
    ) -> dict[str, str]:
        """Each array task's ``--output`` file (stdout and stderr), as far as it is written."""
        directory, out = self.cluster_directory(cluster.name), {}
        for w in workers:
            job_id = str(w.state.get("job_id", ""))
            if not job_id:
                continue
            name = f"slurm-{job_id}.out"
            text = read_tail(directory, "logs", name, os.geteuid(), LOG_BYTES)
            if text:
                out[w.name] = text
        return out

    async def check_workers(self, workers: Sequence[Worker]) -> list[Check]:
        """Answered from the status cache: no Slurm call per check."""
        out = []
        for w in workers:
            info = self.jobs.get(w.name)
            if info is not None:
                check = job_check(info.record)
                if check.phase is Phase.FAILED:
                    check = job_check(info.record, self._why(w))
                out.append(check)
            elif self.cache_time <= w.state.get("submitted", 0) or self.slurm_error:
                why = "waiting for Slurm to list the job"
                if self.slurm_error:
                    why = f"Slurm unreachable ({self.slurm_error})"
                out.append(Check(Phase.PENDING, why))
            else:
                why = self._why(w)
                out.append(
                    Check(
                        Phase.FAILED, "the job left the Slurm queue" + (f": {why}" if why else "")
                    )
                )
        return out

    async def count_unknown(self, known: KnownRecords) -> int:
        """Active jobs (array tasks) of this gateway in ``squeue`` whose cluster is not known."""
        try:
            records = await self.client.jobs(self.gateway_id)
        except LauncherUnavailable as exc:
            self.log.warning("Cannot count Slurm jobs now (%s)", exc)
            return 0
        clusters = (parse_comment(r.comment, self.submitter) for r in records if r.active)
        return sum(1 for c in clusters if c is not None and c[0] not in known.clusters)

    async def remove_unknown(self, known: KnownRecords) -> int:
        """``refresh`` cancels jobs without records; run it now instead of a period later."""
        self.renew_leases(known.clusters)
        try:
            return await self.refresh(known)
        except LauncherUnavailable as exc:
            self.log.warning("Cannot reconcile Slurm jobs now (%s); retrying each period", exc)
            return 0
