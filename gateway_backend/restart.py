"""What a restarted gateway does before serving: reconcile records with what runs.

Launchers remove what runs without a record; records whose scheduler or
worker is gone are failed, with an event for the owner. Apart from the backend
so the backend reads as upstream's hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dask_gateway_server.backends.db_base import JobStatus
from sqlalchemy.engine import make_url

from .state_db import RECOVERY, StateDatabaseError, in_memory_sqlite

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

    from .events import EventLog
    from .launchers.base import KnownRecords, Launcher
    from .pools import PoolBook


async def refuse_to_start_empty_over_running(
    launchers: Sequence[Launcher], known: KnownRecords, db_url: str
) -> None:
    """A database without any cluster record must not remove what this gateway runs.

    That is a first start, or a database emptied, deleted or replaced by another; in the
    latter cases everything the launchers find for this gateway is a running cluster
    whose record was lost, and ``remove_unknown`` would stop them all. Refuse instead,
    naming what runs and the fix. (``elastic-gateway serve`` checks its local processes
    before this; this check covers every launcher and every way of running the gateway.)
    An in-memory database loses its records at every restart by design: there, what runs
    is removed as unknown, as always.
    """
    if in_memory_sqlite(db_url):
        return
    found: dict[str, int] = {}
    for launcher in launchers:
        found[launcher.kind] = found.get(launcher.kind, 0) + await launcher.count_unknown(known)
    running = {kind: n for kind, n in found.items() if n}
    if running:
        what = ", ".join(f"{n} {kind}" for kind, n in running.items())
        where = make_url(db_url).render_as_string(hide_password=True)
        raise StateDatabaseError(
            f"the state database {where} has no cluster record, but this gateway's launchers "
            f"still run things for it ({what}: schedulers, workers, pods or jobs): starting "
            "would stop them as unknown. Restore the database from a copy, or remove them "
            f"(or give this gateway another gateway_id); {RECOVERY}"
        )


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
