"""Scale-down by pool order: which running workers leave, and heartbeats meanwhile."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from gateway_backend.events import EventLog
from gateway_backend.scale_down import PoolOrderScaleDown, choose_running_to_retire


def worker(name: str, pool: str, start: int):
    return SimpleNamespace(name=name, pool=pool, start_time=start)


def test_running_workers_leave_by_pool_order_then_newest_first():
    running = [worker("a1", "a", 1), worker("b1", "b", 2), worker("a2", "a", 3)]
    chosen = choose_running_to_retire(running, lambda w: w.pool, ["a", "b"], 2)
    assert [w.name for w in chosen] == ["a2", "a1"]


async def test_heartbeats_reporting_more_than_a_scale_down_in_progress_are_held_to_it():
    scale = PoolOrderScaleDown([], 60, EventLog(), logging.getLogger("test"))
    scale._targets["c"] = (2, float("inf"))
    assert scale.heartbeat_count("c", 5) == 2
    assert scale.heartbeat_count("c", 2) == 2
    assert scale.heartbeat_count("c", 5) == 5  # the target was reached: no longer held


async def test_heartbeats_of_clusters_without_a_scale_down_pass_unchanged():
    scale = PoolOrderScaleDown([], 60, EventLog(), logging.getLogger("test"))
    assert scale.heartbeat_count("c", 5) == 5
