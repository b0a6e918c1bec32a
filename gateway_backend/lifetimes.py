"""Clusters that outlive their purpose: ``max_lifetime``, ``idle_timeout``, ``no_client_timeout``.

The scheduler itself stops an idle cluster (dask-gateway's scheduler preload
asks the gateway API to stop it after ``idle_timeout``) and one without a client
(``scheduler_presence``, after ``no_client_timeout``); the gateway stops
clusters older than their ``max_lifetime``. Either way the owner reads why in
``cluster.details()``, in the gateway's words: the scheduler only names which
of these reasons applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from dask_gateway_server.backends.db_base import JobStatus

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster


def duration_text(seconds: float) -> str:
    """``90`` -> ``"1.5 min"``, ``7200`` -> ``"2 h"``: lifetimes in the analyst's words."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _profile_note(cluster: Cluster) -> str:
    profile = cluster.config.get("profile")
    return f" of profile {profile}" if profile else ""


def over_lifetime(clusters: Iterable[Cluster], now_ms: int) -> Iterator[tuple[Cluster, str]]:
    """Running clusters past their ``max_lifetime``, each with the reason to show."""
    for cluster in clusters:
        lifetime = cluster.config.get("max_lifetime", 0) or 0
        if (
            lifetime > 0
            and cluster.target == JobStatus.RUNNING
            and now_ms - cluster.start_time > lifetime * 1000
        ):
            yield (
                cluster,
                (
                    f"cluster stopped: it reached its max_lifetime{_profile_note(cluster)} "
                    f"({duration_text(lifetime)})"
                ),
            )


def idle_stop_reason(cluster: Cluster) -> str:
    """Why a cluster's scheduler asked the gateway to stop it (only ever for idleness)."""
    idle = cluster.config.get("idle_timeout", 0) or 0
    return (
        f"cluster stopped: no work for its idle_timeout{_profile_note(cluster)} "
        f"({duration_text(idle)})"
    )


# What a scheduler may give as the reason of its own stop (``?reason=`` of its DELETE).
NO_CLIENT_REASONS = {
    "no_client": "no_client_timeout",
    "no_client_detached": "detached_no_client_timeout",
}


def scheduler_stop_reason(cluster: Cluster, asked: str | None) -> str:
    """Why a cluster's scheduler asked the gateway to stop it: idle (dask-gateway's own
    preload, which names no reason) or without a client for one of the no-client timeouts."""
    key = NO_CLIENT_REASONS.get(asked or "")
    if key is None:
        return idle_stop_reason(cluster)
    limit = cluster.config.get(key, 0) or 0
    return (
        f"cluster stopped: no client connected for its {key}{_profile_note(cluster)} "
        f"({duration_text(limit)})"
    )
