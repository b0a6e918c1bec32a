"""Why each worker ended or never came, as the analyst reads it in ``details()``.

Upstream asks launchers only about workers still starting; a running worker is
followed by the scheduler's heartbeats, which say *that* it left, never *why*
(and the restart grace keeps a vanished worker counted for a while). This asks
the launchers about running workers too, every ``worker_status_period``, and
records the first failure reason of each (the exit signal, ``OOMKilled``, a
``HoldReason``) with its logs, without changing any record: replacing the
worker stays the backend's business.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from dask_gateway_server.backends.db_base import JobStatus

from .launchers import Check, Phase

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

    from .events import EventLog
    from .pools import WorkerPool
    from .worker_logs import LogKeeper

ENDED_PER_CLUSTER = 50
CLUSTERS_KEPT = 1000


class WorkerFates:
    """Ended workers with their reasons per cluster (bounded), and the check that finds them."""

    def __init__(
        self,
        active_clusters: Callable[[], Iterable[Cluster]],
        pool_of: Callable[[Worker], WorkerPool],
        events: EventLog,
        conditions: dict[str, Check],
        logs: LogKeeper,
    ) -> None:
        self._active_clusters = active_clusters
        self._pool_of = pool_of
        self._events = events
        self._conditions = conditions
        self._logs = logs
        self._ended: OrderedDict[str, deque] = OrderedDict()
        self._told: set[str] = set()  # workers whose end was recorded already

    def record(self, cluster: str, worker: str, pool: str, reason: str) -> bool:
        """Note why ``worker`` ended (once per worker); False if it was noted already."""
        if worker in self._told:
            return False
        self._told.add(worker)
        entry = {"worker": worker, "pool": pool, "reason": reason, "time": round(time.time(), 3)}
        if cluster not in self._ended:
            self._ended[cluster] = deque(maxlen=ENDED_PER_CLUSTER)
            while len(self._ended) > CLUSTERS_KEPT:
                self._ended.popitem(last=False)
        self._ended[cluster].append(entry)
        return True

    def ended(self, cluster: str) -> list[dict]:
        """The workers of ``cluster`` that ended, oldest first, with pool and reason."""
        return list(self._ended.get(cluster, ()))

    async def check_running(self) -> None:
        """Ask each pool's launcher about running workers; record and tell the new failures."""
        by_pool: dict[str, list[Worker]] = defaultdict(list)
        pools: dict[str, WorkerPool] = {}
        active = set()
        for cluster in self._active_clusters():
            # A stopping cluster's workers end as asked: nothing to explain.
            running = cluster.status == cluster.target == JobStatus.RUNNING
            for w in cluster.active_workers():
                active.add(w.name)
                if running and w.status == JobStatus.RUNNING and w.name not in self._told:
                    pool = pools.setdefault(self._pool_of(w).name, self._pool_of(w))
                    by_pool[pool.name].append(w)
        self._told &= active  # stopped workers are not checked again
        for pool_name, workers in by_pool.items():
            pool = pools[pool_name]
            try:
                checks = await pool.launcher.check_workers(workers)
            except Exception:
                self._logs.log.debug("Checking running workers of pool %s failed", pool.name)
                continue
            for w, check in zip(workers, checks, strict=True):
                if check.phase != Phase.FAILED:
                    continue
                self._conditions[w.name] = check
                if self.record(w.cluster.name, w.name, pool.name, check.reason):
                    self._events.add(
                        w.cluster.name,
                        f"worker {w.name} in pool {pool.name} ended: {check.reason}",
                        "error",
                    )
                    await self._logs.collect(w.cluster, [w])
