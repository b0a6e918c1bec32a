"""What the gateway does with a scheduler's reports and its requests to stop its cluster.

A mixin of ``ElasticBackend`` (reads its ``db``, ``events``, ``pools`` and
failure bookkeeping). Reports arrive checked (``scheduler_reports``) from the
cluster's own scheduler (the API compared its token); every event text here is
the gateway's own.
"""

from __future__ import annotations

from dask_gateway_server.backends.db_base import Cluster, JobStatus
from dask_gateway_server.utils import timestamp

from .lifetimes import duration_text, scheduler_stop_reason
from .scheduler_reports import Clients, Unreachable, VersionMismatch, WorkerLost
from .usertext import one_line


class SchedulerEvents:
    """Scheduler stops (idle, no client), clients coming and going, unreachable workers,
    version mismatches."""

    def _running_cluster(self, cluster_name: str) -> Cluster | None:
        cluster = self.db.get_cluster(cluster_name)
        if cluster is None or cluster.target != JobStatus.RUNNING:
            return None
        return cluster

    def note_scheduler_stop(self, cluster_name: str, asked: str | None = None) -> None:
        """The scheduler asked to stop its own cluster: idle (dask-gateway's preload) or
        without a client (ours, ``asked`` names which timeout)."""
        cluster = self._running_cluster(cluster_name)
        if cluster is not None:
            self._note_stop_reason(cluster, scheduler_stop_reason(cluster, asked))

    def scheduler_report(
        self, cluster_name: str, report: Unreachable | Clients | VersionMismatch | WorkerLost
    ) -> None:
        """Act on one checked report of a cluster's scheduler."""
        cluster = self._running_cluster(cluster_name)
        if cluster is None:
            return
        if isinstance(report, Unreachable):
            self._worker_unreachable(cluster, report)
        elif isinstance(report, Clients):
            self._clients_changed(cluster, report)
        elif isinstance(report, WorkerLost):
            self.events.add(cluster.name, report.text(), report.level)
        else:
            self._version_mismatch(cluster, report)

    def _clients_changed(self, cluster: Cluster, report: Clients) -> None:
        """Keep the count and the time of the last change (``list_clusters`` shows them)."""
        previous = cluster.state.get("clients") or {}
        if report.detached and not previous.get("detached"):
            limit = cluster.config.get("detached_no_client_timeout", 0) or 0
            self.events.add(
                cluster.name,
                "created with shutdown_on_close=False: kept without a client for "
                + (f"up to {duration_text(limit)}" if limit else "as long as it runs")
                + " (detached_no_client_timeout)",
            )
        clients = {
            "connected": report.connected,
            "detached": report.detached,
            "changed": timestamp(),
            "ever": bool(previous.get("ever") or report.connected),
        }
        self.db.update_cluster(cluster, state={**cluster.state, "clients": clients})

    def _version_mismatch(self, cluster: Cluster, report: VersionMismatch) -> None:
        """Tell the owner; refused workers count towards the failure limit, as unreachable
        ones do: their replacements would run the same environment."""
        text = one_line(report.text())
        if report.role == "worker" and report.refused:
            self._record_worker_failure(cluster, text)  # the event, as an error
            self._count_removed_worker(cluster, "mismatched_workers", text, "had other versions")
        else:
            self.events.add(cluster.name, text, "error" if report.refused else "warning")

    def _worker_unreachable(self, cluster: Cluster, report: Unreachable) -> None:
        """The scheduler removed a worker it cannot connect to: say what to open or set."""
        record = cluster.workers.get(report.worker)
        pool = self.pools.pool_of(record) if record is not None else None
        hint = pool.launcher.reachability_hint(report.address) if pool else ""
        where = f" in pool {pool.name}" if pool else ""
        reason = one_line(
            f"worker {report.worker}{where} at {report.address} cannot be reached from the "
            f"scheduler ({report.error}), so it was removed: {hint}"
        )
        self._record_worker_failure(cluster, reason)
        self._count_removed_worker(
            cluster, "unreachable_workers", reason, "could not be reached from the scheduler"
        )

    def _count_removed_worker(self, cluster: Cluster, key: str, reason: str, why: str) -> None:
        """Replacements would meet the same wall: after ``worker_start_failure_limit``
        such workers the cluster fails with the reason instead of retrying forever."""
        removed = cluster.state.get(key, 0) + 1
        self.db.update_cluster(cluster, state={**cluster.state, key: removed})
        if removed >= self.worker_start_failure_limit:
            self._fail_cluster(
                cluster,
                f"{removed} workers {why} "
                f"(limit ElasticBackend.worker_start_failure_limit); last: {reason}",
            )

    def _note_stop_reason(self, cluster: Cluster, reason: str) -> None:
        self.log.info("Cluster %s: %s", cluster.name, reason)
        self.events.add(cluster.name, reason, "warning")
        self.db.update_cluster(cluster, state={**cluster.state, "stop_reason": reason})
