"""What a restarted gateway does before serving: reconcile records with what runs.

Launchers remove what runs without a record; records whose scheduler or
worker is gone are failed, with an event for the owner. Apart from the backend
so the backend reads as upstream's hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dask_gateway_server.backends.db_base import JobStatus

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

    from .events import EventLog
    from .launchers.base import KnownRecords, Launcher
    from .pools import PoolBook


async def reconcile_after_restart(
    *,
    db,
    queue,
    log,
    launchers: Sequence[Launcher],
    scheduler_launcher: Launcher,
    pools: PoolBook,
    known: KnownRecords,
    events: EventLog,
    fail_cluster: Callable[[Cluster, str], None],
) -> None:
    """Remove strays, fail clusters whose scheduler is gone and workers that are gone."""
    for launcher in launchers:
        removed = await launcher.remove_unknown(known)
        if removed:
            log.warning("Removed %d %s resources with no record", removed, launcher.kind)

    active = list(db.active_clusters())
    started = [c for c in active if c.status in (JobStatus.SUBMITTED, JobStatus.RUNNING)]
    if started:
        checks = await scheduler_launcher.check_schedulers(started)
        for cluster, check in zip(started, checks, strict=True):
            if not check.alive:
                why = f": {check.reason}" if check.reason else ""
                fail_cluster(cluster, f"the scheduler was gone when the gateway restarted{why}")

    for pool in pools.pools:
        workers = [
            w
            for c in active
            if c.target == JobStatus.RUNNING
            for w in c.workers.values()
            if w.is_active()
            and w.status in (JobStatus.SUBMITTED, JobStatus.RUNNING)
            and pools.pool_of(w) is pool
        ]
        if not workers:
            continue
        checks = await pool.launcher.check_workers(workers)
        gone = [
            (w, {"target": JobStatus.FAILED})
            for w, c in zip(workers, checks, strict=True)
            if not c.alive
        ]
        db.update_workers(gone)
        for w, _ in gone:
            events.add(w.cluster.name, f"worker {w.name} was gone after a gateway restart")
            queue.put(w)
