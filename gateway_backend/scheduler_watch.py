"""Running clusters whose scheduler ended are failed on the launcher's word, not by silence.

Upstream asks the launcher about a cluster's scheduler only while the cluster starts; once
it runs, only missed heartbeats (``cluster_heartbeat_timeout``) fail it. Until then its
record stays RUNNING, counted against its VO's quota, its workers held, its owner told
nothing. The launcher usually knows within a second (the pod reported Failed by its
kubelet, the process gone), so this step asks it every ``cluster_status_period`` and fails
the running clusters whose scheduler it reports ended, with its reason.
"""

from __future__ import annotations

from functools import partial
from logging import Logger
from typing import Any

from dask_gateway_server.backends.db_base import JobStatus

from .launchers.base import Launcher, Phase
from .periodic import run_periodically


def watch_schedulers(backend: Any) -> None:
    """Run ``fail_ended_schedulers`` every ``cluster_status_period`` in the backend's loops."""
    launcher = backend.scheduler_launcher_instance
    step = partial(fail_ended_schedulers, backend.db, backend.queue, launcher, backend.log)
    what = "Checking the schedulers of running clusters"
    run_periodically(backend._loops, step, backend.cluster_status_period, backend.log, what)


async def fail_ended_schedulers(db: Any, queue: Any, launcher: Launcher, log: Logger) -> None:
    """One look at every running cluster's scheduler; fail those the launcher says ended.

    Only a FAILED answer counts: PENDING (the API server away, the watch not synced yet)
    leaves the cluster to the heartbeat timeout, as before. The failure then takes
    upstream's path, as a missed heartbeat's does: the stop records the launcher's reason
    (and the scheduler's last log lines) for the owner.
    """
    running = [c for c in db.active_clusters() if c.status == c.target == JobStatus.RUNNING]
    if not running:
        return
    try:
        checks = await launcher.check_schedulers(running)
    except Exception:
        log.debug("Checking the schedulers of running clusters failed", exc_info=True)
        return
    for cluster, check in zip(running, checks, strict=True):
        # Looked at again: a stop may have been asked while the launcher answered.
        if check.phase == Phase.FAILED and cluster.target == JobStatus.RUNNING:
            log.info("Cluster %s failed: its scheduler ended (%s)", cluster.name, check.reason)
            db.update_cluster(cluster, target=JobStatus.FAILED)
            queue.put(cluster)
