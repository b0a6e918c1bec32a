"""One line per cluster for ``list_clusters``: what an analyst needs to spot a forgotten one.

Age, workers, the cores and memory they hold, and the last client activity
(clients come and go as the scheduler reports them, ``scheduler_presence``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dask_gateway_server.backends.db_base import JobStatus

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

GIB = 2**30


def cluster_summary(cluster: Cluster, now_ms: int) -> dict[str, Any]:
    """Name, status, profile, age, workers, cores, memory and client activity of a cluster.

    ``last_client_activity`` (seconds since the epoch) is now while a client is
    connected, the moment the last one left otherwise, and None if none ever came.
    """
    running = pending = 0
    for w in cluster.workers.values():
        if w.status >= JobStatus.STOPPED or w.target > JobStatus.RUNNING:
            continue
        if w.status == JobStatus.RUNNING:
            running += 1
        else:
            pending += 1
    config = cluster.config
    clients = cluster.state.get("clients") or {}
    connected = clients.get("connected")
    if connected:
        last = now_ms
    elif clients.get("ever"):
        last = clients.get("changed")
    else:
        last = None
    held = running + pending
    return {
        "name": cluster.name,
        "status": cluster.model_status.name,
        "profile": config.get("profile") or None,
        "start_time": cluster.start_time / 1000,
        "age_seconds": max(0, now_ms - cluster.start_time) / 1000,
        "workers": {"running": running, "pending": pending, "requested": cluster.count},
        "cores": held * int(config.get("worker_cores", 1) or 1),
        "memory_gib": round(held * (config.get("worker_memory", 0) or 0) / GIB, 3),
        "clients_connected": connected,
        "last_client_activity": None if last is None else last / 1000,
        "detached": bool(clients.get("detached")),
    }
