"""When the gateway fetches logs from launchers, and what it answers the owner.

Logs are fetched from the launchers' own sources at the moments they may
vanish: just before workers are stopped (a pod is deleted, a job's sandbox is
cleaned), when a cluster stops, and whenever the owner asks (so running
workers' logs are fresh). ``LogStore`` keeps the latest copy, scrubbed and
bounded, for ``log_keep_for`` seconds after the cluster stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from dask_gateway_server.backends.db_base import JobStatus

from .launchers.exit_reasons import last_lines
from .log_store import LogStore

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

    from .launchers import Launcher

FETCH_TIMEOUT = 15.0


def cluster_secrets(cluster: Cluster) -> list[str]:
    """What a cluster's processes hold that must never be shown: its API token and TLS key."""
    key = cluster.tls_key.decode("utf-8", "replace") if cluster.tls_key else ""
    return [s for s in (cluster.token, key) if s]


class LogKeeper:
    """Fetches logs through the launchers into a ``LogStore``, and reads them back."""

    def __init__(
        self,
        store: LogStore,
        scheduler_launcher: Callable[[], Launcher],
        launcher_of: Callable[[Worker], Launcher],
        log: logging.Logger,
    ) -> None:
        self.store = store
        self._scheduler_launcher = scheduler_launcher
        self._launcher_of = launcher_of
        self.log = log

    @classmethod
    def for_backend(cls, backend: Any) -> LogKeeper:
        """The keeper of an ``ElasticBackend``'s settings; its launchers are looked up when
        used (they are made after the keeper, whose stops wrap theirs)."""
        store = LogStore(
            backend.log_directory,
            backend.log_max_bytes_per_process,
            backend.log_max_bytes_per_cluster,
            backend.log_keep_for,
        )
        return cls(
            store,
            lambda: backend.scheduler_launcher_instance,
            lambda w: backend.pools.pool_of(w).launcher,
            backend.log,
        )

    async def _fetch(
        self, launcher: Launcher, cluster: Cluster, workers: Sequence[Worker], scheduler: bool
    ) -> dict[str, str]:
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                return await launcher.fetch_logs(cluster, workers, scheduler)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.warning(
                "Fetching logs of cluster %s from the %s launcher failed",
                cluster.name,
                launcher.kind,
                exc_info=True,
            )
            return {}

    async def collect(
        self, cluster: Cluster, workers: Sequence[Worker] = (), scheduler: bool = False
    ) -> None:
        """Fetch and keep the logs of ``workers`` (and the scheduler's) of ``cluster`` now."""
        by_launcher: dict[Launcher, list[Worker]] = defaultdict(list)
        for w in workers:
            by_launcher[self._launcher_of(w)].append(w)
        sched = self._scheduler_launcher()
        if scheduler:
            by_launcher.setdefault(sched, [])
        fetched = await asyncio.gather(
            *(
                self._fetch(launcher, cluster, ws, scheduler and launcher is sched)
                for launcher, ws in by_launcher.items()
            )
        )
        logs = {k: v for part in fetched for k, v in part.items()}
        try:  # scrubbing and writing megabytes: not on the event loop
            await asyncio.to_thread(
                self.store.save, cluster.name, cluster.username, logs, cluster_secrets(cluster)
            )
        except OSError:
            self.log.warning("Keeping logs of cluster %s failed", cluster.name, exc_info=True)

    def before_stop(
        self, stop: Callable[[Sequence[Worker]], Awaitable[None]]
    ) -> Callable[[Sequence[Worker]], Awaitable[None]]:
        """``stop`` (a launcher's ``stop_workers``), keeping the workers' logs first."""

        async def keep_then_stop(workers: Sequence[Worker]) -> None:
            by_cluster: dict[str, list[Worker]] = defaultdict(list)
            for w in workers:
                if w.status > JobStatus.CREATED:  # never submitted: nothing to fetch
                    by_cluster[w.cluster.name].append(w)
            await asyncio.gather(*(self.collect(ws[0].cluster, ws) for ws in by_cluster.values()))
            await stop(workers)

        return keep_then_stop

    async def read(self, cluster: Cluster, worker: str | None, tail: int | None) -> dict:
        """The owner's view: fresh logs of a live cluster's processes, kept ones of the rest."""
        if cluster.status < JobStatus.STOPPED:
            live = [
                w
                for w in cluster.workers.values()
                if JobStatus.CREATED < w.status < JobStatus.STOPPED
                and (worker is None or w.name == worker)
            ]
            wants_scheduler = worker in (None, "scheduler") and cluster.status > JobStatus.CREATED
            await self.collect(cluster, live, scheduler=wants_scheduler)
        return await asyncio.to_thread(self.store.read, cluster.name, worker, tail)

    async def scheduler_tail(self, cluster: Cluster) -> str:
        """The last lines of the scheduler's log (for a failed start's reason), fetched now."""
        await self.collect(cluster, scheduler=True)
        return last_lines(self.store.read(cluster.name, "scheduler").get("scheduler", ""), 5)

    def stopped(self, cluster_name: str) -> None:
        """The cluster stopped: its logs' retention time starts."""
        try:
            self.store.stopped(cluster_name)
            if self.store.keep_for == 0:
                self.store.prune()
        except OSError:
            self.log.warning("Noting the stop of cluster %s's logs failed", cluster_name)

    async def prune(self) -> None:
        """Delete logs of clusters stopped longer than the retention time."""
        removed = await asyncio.to_thread(self.store.prune)
        if removed:
            self.log.info("Deleted the logs of %d stopped clusters", removed)
