"""Scale-down by pool order: which running workers leave, and heartbeats meanwhile."""

from __future__ import annotations

import logging
import socket
import time
from types import SimpleNamespace

import pytest
from dask_gateway_server.tls import new_keypair

from gateway_backend import scale_down
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


async def test_retiring_on_a_dead_scheduler_gives_up_at_the_connect_timeout(monkeypatch):
    """A scheduler that died unnoticed refuses connections: the user's scale request must not
    wait distributed's 30 s connect timeout (found by benchmarks/chaos.py kubelet-kill)."""
    monkeypatch.setattr(scale_down, "SCHEDULER_CONNECT_TIMEOUT", 1.0)
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cert, key = new_keypair("dead")
    cluster = SimpleNamespace(
        scheduler_address=f"tls://127.0.0.1:{port}", tls_key=key, tls_cert=cert
    )
    t0 = time.monotonic()
    with pytest.raises(OSError):
        await scale_down.retire_on_scheduler(cluster, ["w1"], seconds=60)
    assert time.monotonic() - t0 < 5
