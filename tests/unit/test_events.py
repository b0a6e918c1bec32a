"""Events per cluster: bounded per cluster, forgotten a while after the cluster stops."""

from __future__ import annotations

from gateway_backend.events import EventLog


def test_events_of_a_running_cluster_are_bounded_per_cluster():
    log = EventLog(per_cluster=3)
    for i in range(10):
        log.add("c", f"event {i}")
    assert [e["message"] for e in log.get("c")] == ["event 7", "event 8", "event 9"]


def test_a_stopped_clusters_events_stay_readable_until_the_retention_ends():
    log = EventLog(keep_stopped_for=60)
    log.add("c", "cluster failed: out of memory", "error")
    log.stopped("c", now=1000)
    log.expire(now=1059)
    assert log.get("c")[0]["message"] == "cluster failed: out of memory"
    log.expire(now=1060)
    assert log.get("c") == [] and len(log) == 0


def test_only_the_most_recently_stopped_clusters_are_kept():
    log = EventLog(keep_stopped_for=3600, max_stopped=2)
    for name in ("a", "b", "c"):
        log.add(name, "started")
        log.stopped(name, now=1000)
    assert log.get("a") == [] and log.get("b") and log.get("c")
    assert len(log) == 2


def test_running_clusters_are_never_expired():
    log = EventLog(keep_stopped_for=1, max_stopped=0)
    log.add("running", "started")
    log.add("done", "started")
    log.stopped("done", now=0)
    log.expire(now=10**9)
    assert log.get("running") and not log.get("done")
