"""Placement across worker pools, end to end with local pools (different caps, one slow)."""

from __future__ import annotations

import pytest

from ..conftest import http, wait_for, workers_of

pytestmark = pytest.mark.e2e

SLOW = "tests.support_launchers.SlowLocalLauncher"


def running_per_pool(gw, cluster) -> dict[str, int]:
    return {name: p["running"] for name, p in gw.cluster_details(cluster.name)["pools"].items()}


def test_ordered_spill_fills_the_first_pool_to_its_cap_then_the_next(gateways):
    gateway = gateways.start(
        'c.ElasticBackend.worker_pools = {"first": {"max_workers": 2}, "second": {}}\n'
    )
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(5)
        wait_for(lambda: workers_of(cluster) == 5, what="5 workers")
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"first": 2, "second": 3},
            what="2 workers in the first pool and 3 in the second",
        )
        client = cluster.get_client()
        futures = client.map(lambda i: i * i, range(200), pure=False)
        assert sum(client.gather(futures)) == sum(i * i for i in range(200))
        client.close()
        cluster.details()  # the repr shows the pools as last fetched, never fetching itself
        assert "2 running" in repr(cluster) and "3 running" in repr(cluster)
        cluster.scale(0)
        wait_for(lambda: workers_of(cluster) == 0, what="scale to 0")
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"first": 0, "second": 0},
            what="no workers in any pool",
        )
        cluster.shutdown()
    finally:
        gw.close()


def test_a_worker_pending_too_long_moves_to_the_next_pool(gateways):
    gateway = gateways.start(
        f'c.ElasticBackend.worker_pools = {{"slow": {{"launcher": "{SLOW}", "burst_after": 3}},'
        ' "fast": {}}\n'
        "c.SlowLocalLauncher.start_delay = 120\n"
    )
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(2)
        wait_for(
            lambda: gw.cluster_details(cluster.name)["pools"]["slow"]["pending"] == 2,
            what="2 workers pending in the slow pool",
        )
        wait_for(lambda: workers_of(cluster) == 2, timeout=40, what="2 workers via the fast pool")
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"slow": 0, "fast": 2},
            what="both workers in the fast pool",
        )
        details = gw.cluster_details(cluster.name)
        assert details["pools"]["slow"]["pending"] == 0  # the stuck ones were withdrawn
        moved = [e for e in details["events"] if "moved to pool fast" in e["message"]]
        # Both stuck workers moved; on a loaded machine a fast worker that fails to start is
        # replaced, lands in the slow pool first and moves again, so more moves are fine.
        assert len(moved) >= 2
        cluster.shutdown()
    finally:
        gw.close()


def test_users_choose_their_pools_with_the_worker_pools_option(gateways):
    gateway = gateways.start(
        'c.ElasticBackend.worker_pools = {"first": {"max_workers": 1}, "second": {}}\n'
    )
    status, body = http(
        gateway, "POST", "/api/v1/clusters/", {"cluster_options": {"worker_pools": "third"}}
    )
    assert status == 422
    assert (
        "worker_pools: 'third' is not a pool you may use; choose from: first, second"
        in (body["error"])
    )
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster(worker_pools="second")
        cluster.scale(2)
        wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"second": 2},
            what="workers only in the chosen pool",
        )
        cluster.shutdown()
    finally:
        gw.close()


def test_scale_down_releases_the_pool_spilled_into_first(gateways):
    gateway = gateways.start(
        'c.ElasticBackend.worker_pools = {"first": {"max_workers": 2}, "second": {}}\n'
    )
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(4)
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"first": 2, "second": 2},
            what="2 + 2 workers",
        )
        cluster.scale(2)
        wait_for(lambda: workers_of(cluster) == 2, what="scale down to 2")
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"first": 2, "second": 0},
            what="the second pool's workers to be the ones retired",
        )
        events = [e["message"] for e in gw.cluster_details(cluster.name)["events"]]
        assert "scale-down retired 2 worker(s) from second" in events
        cluster.shutdown()
    finally:
        gw.close()


def test_admins_set_which_pool_scales_down_first(gateways):
    gateway = gateways.start(
        'c.ElasticBackend.worker_pools = {"first": {"max_workers": 2}, "second": {}}\n'
        'c.ElasticBackend.scale_down_order = ["first"]\n'
    )
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(3)
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"first": 2, "second": 1},
            what="2 + 1 workers",
        )
        cluster.scale(1)
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"first": 0, "second": 1},
            what="the first pool's workers to be the ones retired",
        )
        assert workers_of(cluster) == 1
        cluster.shutdown()
    finally:
        gw.close()


def test_adapt_grows_across_pools_under_load_and_shrinks_when_idle(gateways):
    # Adaptive runs in the scheduler and asks the gateway for workers: placement
    # spreads them over the pools exactly as for a manual scale.
    gateway = gateways.start(
        'c.ElasticBackend.worker_pools = {"first": {"max_workers": 1}, "second": {}}\n'
    )
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.adapt(minimum=0, maximum=3)
        client = cluster.get_client()

        def slow(i):
            import time

            time.sleep(0.5)
            return i

        futures = client.map(slow, range(60), pure=False)
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"first": 1, "second": 2},
            timeout=90,
            what="adapt to fill the first pool's 1 slot and spill 2 into the second",
        )
        assert sum(client.gather(futures)) == sum(range(60))
        del futures
        wait_for(
            lambda: running_per_pool(gw, cluster) == {"first": 0, "second": 0},
            timeout=90,
            what="adapt to release every worker once idle",
        )
        client.close()
        cluster.shutdown()
    finally:
        gw.close()
