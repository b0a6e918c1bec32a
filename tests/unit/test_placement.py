"""Placement: which pool gets the next worker, and where a long-pending worker moves."""

from __future__ import annotations

from types import SimpleNamespace

from dask_gateway_server.backends.db_base import JobStatus

from gateway_backend.placement import ordered_spill, plan_bursts
from gateway_backend.pools import WorkerPool


def pool(name: str, cap: int | None = None, burst_after: float | None = None) -> WorkerPool:
    return WorkerPool(name, launcher=None, max_workers=cap, burst_after=burst_after)


def test_ordered_spill_fills_pools_in_order_up_to_each_cap():
    pods, jobs = pool("pods", cap=2), pool("jobs")
    plan = ordered_spill([pods, jobs], {}, 8)
    assert [(p.name, k) for p, k in plan] == [("pods", 2), ("jobs", 6)]


def test_ordered_spill_counts_workers_already_in_a_pool():
    pods, jobs = pool("pods", cap=2), pool("jobs", cap=10)
    plan = ordered_spill([pods, jobs], {"pods": 2, "jobs": 7}, 5)
    assert [(p.name, k) for p, k in plan] == [("jobs", 3)]


def test_ordered_spill_places_nothing_when_every_pool_is_full():
    assert ordered_spill([pool("a", cap=1)], {"a": 1}, 3) == []


def test_ordered_spill_counts_a_pool_listed_twice_once():
    a = pool("a", cap=2)
    assert [(p.name, k) for p, k in ordered_spill([a, a, a], {}, 6)] == [("a", 2)]


def pending(name: str, pool_name: str, since_ms: float):
    return SimpleNamespace(
        name=name,
        status=JobStatus.SUBMITTED,
        target=JobStatus.RUNNING,
        start_time=since_ms,
        state={"pool": pool_name},
    )


def test_workers_pending_past_burst_after_move_to_the_next_pool_with_room():
    slow, full, spare = pool("slow", burst_after=3), pool("full", cap=1), pool("spare")
    pools = [slow, full, spare]
    by_name = {p.name: p for p in pools}
    old, new = pending("old", "slow", 0), pending("new", "slow", 9_000)
    usage = {"full": 1}
    moves = plan_bursts([old, new], pools, lambda w: by_name[w.state["pool"]], usage, 10_000)
    assert moves == {"spare": [old]}
    assert usage == {"full": 1, "spare": 1}


def test_a_pending_worker_with_nowhere_to_go_stays():
    slow, full = pool("slow", burst_after=1), pool("full", cap=0)
    by_name = {"slow": slow, "full": full}
    worker = pending("w", "slow", 0)
    assert plan_bursts([worker], [slow, full], lambda w: by_name["slow"], {}, 10_000) == {}
