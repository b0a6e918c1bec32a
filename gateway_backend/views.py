"""What the HTTP additions and the metrics read of the gateway, in one object.

The backend builds it once at set-up and hands it to ``api.add_routes``; the
routes never see the backend, so neither module depends on the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

    from .events import EventLog
    from .launchers.base import Check
    from .pools import PoolBook
    from .profile_book import ProfileBook
    from .quota_book import QuotaBook
    from .scheduler_reports import Clients, Unreachable, VersionMismatch, WorkerLost
    from .worker_fates import WorkerFates
    from .worker_logs import LogKeeper

    Report = Unreachable | Clients | VersionMismatch | WorkerLost


@dataclass(frozen=True)
class GatewayViews:
    """Read-only views of the gateway's state for the API and the metrics."""

    get_cluster: Callable[[str], Cluster | None]
    """The record of a cluster by name (stopped ones too, until upstream cleans them)."""
    quotas: QuotaBook
    pools: PoolBook
    pool_usage: Callable[[], Mapping[str, int]]
    """Workers per pool holding resources, over all clusters."""
    events: EventLog
    conditions: Mapping[str, Check]
    """The latest check of each pending or failed worker, by worker name."""
    metrics_api_token: str
    profiles: ProfileBook
    note_scheduler_stop: Callable[[str, str | None], None]
    """(cluster, reason asked): its scheduler asked the API to stop it (for the owner's events)."""
    scheduler_report: Callable[[str, Report], None]
    """(cluster, checked report): what its scheduler found (``scheduler_reports``)."""
    clusters_of: Callable[[str], list[Cluster]]
    """The active clusters of a user, by user name."""
    logs: LogKeeper
    """Schedulers' and workers' logs: fetched from launchers, kept after they stop."""
    fates: WorkerFates
    """Workers that ended or never came, with the reason, per cluster."""
