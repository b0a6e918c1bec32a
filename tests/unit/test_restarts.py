"""A worker its Nanny restarts is not taken for a dead one."""

from __future__ import annotations

from gateway_backend.restarts import RestartGrace


def beat(active=(), closing=(), closed=()):
    return {
        "count": 2,
        "active_workers": list(active),
        "closing_workers": list(closing),
        "closed_workers": list(closed),
    }


def test_an_unexpected_closure_counts_as_active_during_the_grace():
    grace = RestartGrace(30)
    held = grace.hold("c", beat(active=["a"], closed=["b"]), now=100)
    assert held["active_workers"] == ["a", "b"] and held["closed_workers"] == []
    still = grace.hold("c", beat(active=["a"], closed=["b"]), now=129)
    assert still["closed_workers"] == []


def test_a_worker_still_gone_after_the_grace_is_reported_closed():
    grace = RestartGrace(30)
    grace.hold("c", beat(closed=["b"]), now=100)
    assert grace.hold("c", beat(closed=["b"]), now=131)["closed_workers"] == ["b"]


def test_a_worker_back_in_time_starts_afresh_next_time():
    grace = RestartGrace(30)
    grace.hold("c", beat(closed=["b"]), now=100)
    grace.hold("c", beat(active=["b"]), now=105)  # the restarted worker registered
    assert grace.hold("c", beat(closed=["b"]), now=200)["closed_workers"] == []


def test_workers_asked_to_leave_are_reported_closed_at_once():
    grace = RestartGrace(30)
    msg = beat(closing=["x"], closed=["x", "y"])
    assert grace.hold("c", msg, expected=["y"], now=100)["closed_workers"] == ["x", "y"]


def test_a_stopped_cluster_is_forgotten():
    grace = RestartGrace(30)
    grace.hold("c", beat(closed=["b"]), now=100)
    grace.forget("c")
    assert grace._closed_since == {}
