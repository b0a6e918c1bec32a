"""Why clusters stop by themselves, in the analyst's words."""

from __future__ import annotations

from types import SimpleNamespace

from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.utils import FrozenAttrDict

from gateway_backend.lifetimes import duration_text, idle_stop_reason, over_lifetime


def cluster(name, started_s, max_lifetime=0, idle_timeout=0, profile="", target=None):
    config = FrozenAttrDict(
        {"max_lifetime": max_lifetime, "idle_timeout": idle_timeout, "profile": profile}
    )
    return SimpleNamespace(
        name=name,
        start_time=int(started_s * 1000),
        config=config,
        target=target or JobStatus.RUNNING,
    )


def test_durations_read_in_the_largest_whole_unit():
    assert [duration_text(s) for s in (3, 90, 7200, 43200, 172800)] == [
        "3 s",
        "1.5 min",
        "2 h",
        "12 h",
        "2 d",
    ]


def test_only_running_clusters_past_their_max_lifetime_are_stopped():
    clusters = [
        cluster("old", 0, max_lifetime=3600, profile="desy-12h"),
        cluster("young", 3000, max_lifetime=3600),
        cluster("unlimited", 0),
        cluster("stopping", 0, max_lifetime=60, target=JobStatus.STOPPED),
    ]
    expired = list(over_lifetime(clusters, now_ms=3601 * 1000))
    assert [(c.name, why) for c, why in expired] == [
        ("old", "cluster stopped: it reached its max_lifetime of profile desy-12h (1 h)")
    ]


def test_the_idle_reason_names_the_timeout():
    reason = idle_stop_reason(cluster("c", 0, idle_timeout=1800))
    assert reason == "cluster stopped: no work for its idle_timeout (30 min)"
