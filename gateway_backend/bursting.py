"""Workers pending too long in one pool move to the next pool with room.

A mixin of ``ElasticBackend`` (it reads the backend's ``db``, ``pools``, ``events``,
``worker_conditions`` and starts workers with its ``_start_batch``); never used alone.
"""

from __future__ import annotations

from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.utils import timestamp

from .placement import plan_bursts


class PendingBursts:
    """``burst_pending_workers``, run periodically when a pool sets ``burst_after``."""

    async def burst_pending_workers(self) -> None:
        """Move workers pending longer than their pool's ``burst_after`` to the next pool.

        The pending worker is withdrawn and a new one started in the first later
        pool (of the cluster's pools) with room, in the same step, so the cluster's
        size and VO usage do not change.
        """
        now = timestamp()
        usage = None  # one count over all clusters, again only after workers were started
        for cluster in list(self.db.active_clusters()):
            if cluster.status != JobStatus.RUNNING or cluster.target != JobStatus.RUNNING:
                continue
            if usage is None:
                usage = self.pool_usage()
            moves = plan_bursts(
                list(cluster.workers.values()),
                self.pools.pools_for(cluster.options),
                self.pools.pool_of,
                usage,
                now,
            )
            for target_name, stuck in moves.items():
                self.db.update_workers(
                    [(w, {"target": JobStatus.STOPPED, "close_expected": True}) for w in stuck]
                )
                for w in stuck:
                    self.queue.put(w)
                    pool = self.pools.pool_of(w)
                    condition = self.worker_conditions.get(w.name)
                    why = f" ({condition.reason})" if condition and condition.reason else ""
                    self.events.add(
                        cluster.name,
                        f"worker {w.name} pending in pool {pool.name} for more than "
                        f"{pool.burst_after:g}s{why}: moved to pool {target_name}",
                    )
                await self._start_batch(cluster, self.pools.by_name[target_name], len(stuck))
                usage = None  # others may have started workers meanwhile
