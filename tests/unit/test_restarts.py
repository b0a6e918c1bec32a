"""A worker its Nanny restarts is not taken for a dead one."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from dask_gateway_server.backends.db_base import JobStatus

from gateway_backend.launchers import Check, Phase
from gateway_backend.replacement import checked_closures
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


class Launcher:
    """Answers check_workers from a fixed set of live worker names, or cannot tell."""

    def __init__(self, alive=(), unreachable=False):
        self.alive = set(alive)
        self.unreachable = unreachable
        self.asked: list[list[str]] = []

    async def check_workers(self, workers):
        self.asked.append([w.name for w in workers])
        if self.unreachable:
            return [Check(Phase.PENDING, "schedd unreachable") for _ in workers]
        return [
            Check(Phase.RUNNING) if w.name in self.alive else Check(Phase.FAILED, "job left")
            for w in workers
        ]


def heartbeat(launcher, names, msg):
    """What ElasticBackend.on_cluster_heartbeat does: the launchers' checks, then the grace."""
    running = JobStatus.RUNNING
    workers = {
        n: SimpleNamespace(name=n, close_expected=False, status=running, target=running)
        for n in names
    }
    cluster = SimpleNamespace(workers=workers)
    closed = msg["closed_workers"]
    log = logging.getLogger("test")
    checks = asyncio.run(checked_closures(cluster, closed, lambda w: launcher, log))
    return RestartGrace(30).hold("c", msg, [n for n, c in checks.items() if not c.alive])


def test_a_closed_worker_whose_job_is_gone_is_reported_closed_at_once():
    launcher = Launcher(alive=["a"])
    msg = heartbeat(launcher, ["a", "b"], beat(active=["a"], closed=["b"]))
    assert msg["active_workers"] == ["a"] and msg["closed_workers"] == ["b"]
    assert launcher.asked == [["b"]]  # only the closed worker is checked


def test_a_closed_worker_whose_process_still_runs_is_held_as_a_nanny_restart():
    msg = heartbeat(Launcher(alive=["a", "b"]), ["a", "b"], beat(active=["a"], closed=["b"]))
    assert msg["active_workers"] == ["a", "b"] and msg["closed_workers"] == []


def test_a_launcher_that_cannot_tell_keeps_the_worker_held():
    msg = heartbeat(Launcher(unreachable=True), ["b"], beat(closed=["b"]))
    assert msg["active_workers"] == ["b"]


def test_no_launcher_is_asked_when_nothing_is_held():
    launcher = Launcher(alive=["a"])
    heartbeat(launcher, ["a"], beat(active=["a"]))
    assert launcher.asked == []
