"""What ``ElasticCluster`` shows about its workers, and when it asks the gateway for it."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from client_ext import ElasticCluster
from client_ext.cluster import _refresh_widget_pools

NAME = "c1"
DETAILS_URL = f"https://gateway.example.org/api/elastic/v1/clusters/{NAME}"


def details(cpu_running: int = 2, cpu_pending: int = 1) -> dict[str, Any]:
    """A cluster's details as the gateway answers them, two pools."""
    pools = {
        "cpu": {"pending": cpu_pending, "running": cpu_running, "stopping": 0},
        "gpu": {"pending": 0, "running": 0, "stopping": 0},
    }
    for counts in pools.values():
        counts["pending_reasons"] = ["no free slot"] * counts["pending"]
    return {"name": NAME, "status": "RUNNING", "pools": pools, "events": []}


class FakeGateway:
    """Stands in for the upstream ``Gateway`` a cluster holds; records every request.

    Answers a cluster's details from ``clusters`` (name -> details); has no loop
    thread, so closing a cluster on it stops nothing.
    """

    asynchronous = False
    address = "https://gateway.example.org"
    loop = SimpleNamespace(asyncio_loop=SimpleNamespace(is_running=lambda: False))

    def __init__(self, clusters: dict[str, dict[str, Any]] | None = None) -> None:
        self.clusters = clusters or {}
        self.requests: list[str] = []

    def close(self) -> None:
        pass

    def sync(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run(func(*args, **kwargs))

    async def _request(self, method: str, url: str, json: Any = None) -> SimpleNamespace:
        self.requests.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in self.clusters:
            raise ConnectionError("the gateway is not reachable")
        answer = self.clusters[name]

        async def read_json() -> dict[str, Any]:
            return answer

        return SimpleNamespace(json=read_json)


def cluster_on(gateway: FakeGateway) -> ElasticCluster:
    """A running ``ElasticCluster`` on ``gateway``, without starting anything."""
    cluster = ElasticCluster.__new__(ElasticCluster)
    cluster.gateway, cluster.name, cluster.status = gateway, NAME, "running"
    cluster.scheduler_info, cluster.dashboard_link = {"workers": {}}, None
    return cluster


async def until(predicate: Callable[[], bool]) -> None:
    """Wait up to 2 s for ``predicate`` to hold."""
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail("timed out")


def test_repr_asks_the_gateway_nothing():
    gateway = FakeGateway({NAME: details()})
    assert repr(cluster_on(gateway)) == "ElasticCluster<c1, status=running>"
    assert gateway.requests == []


def test_repr_shows_the_pool_counts_details_fetched_last():
    cluster = cluster_on(FakeGateway({NAME: details()}))
    cluster.details()
    assert repr(cluster) == (
        "ElasticCluster<c1, status=running, workers=[cpu: 2 running + 1 pending, gpu: 0 running]>"
    )


def test_repr_keeps_the_last_counts_while_the_gateway_is_unreachable():
    gateway = FakeGateway({NAME: details()})
    cluster = cluster_on(gateway)
    cluster.details()
    gateway.clusters.clear()
    with pytest.raises(ConnectionError):
        cluster.details()
    assert "cpu: 2 running + 1 pending" in repr(cluster)


def test_repr_of_a_cluster_whose_creation_failed_early_still_works():
    assert repr(ElasticCluster.__new__(ElasticCluster)) == "ElasticCluster<None, status=None>"


def test_pool_summary_asks_the_gateway_and_leaves_out_pending_reasons():
    gateway = FakeGateway({NAME: details()})
    assert cluster_on(gateway).pool_summary() == {
        "cpu": {"pending": 1, "running": 2, "stopping": 0},
        "gpu": {"pending": 0, "running": 0, "stopping": 0},
    }
    assert gateway.requests == [DETAILS_URL]


def test_the_html_view_asks_the_gateway_nothing_and_says_where_the_counts_are():
    gateway = FakeGateway({NAME: details()})
    assert "see <code>cluster.details()</code>" in cluster_on(gateway)._repr_html_()
    assert gateway.requests == []


def test_the_html_view_shows_the_pool_counts_details_fetched_last():
    cluster = cluster_on(FakeGateway({NAME: details()}))
    cluster.details()
    assert "cpu: 2 running + 1 pending, gpu: 0 running" in cluster._repr_html_()


def test_the_widget_status_shows_the_last_counts_without_asking_the_gateway():
    # Upstream computes it on the event loop whenever a worker joins or leaves.
    gateway = FakeGateway({NAME: details()})
    cluster = cluster_on(gateway)
    cluster.details()
    status = cluster._widget_status()
    assert "<b>Workers per pool:</b> cpu: 2 running + 1 pending, gpu: 0 running" in status
    assert gateway.requests == [DETAILS_URL]  # only details() asked


def test_the_widget_of_a_closed_cluster_starts_no_refresh():
    pytest.importorskip("ipywidgets")
    cluster = cluster_on(FakeGateway({NAME: details()}))
    cluster.status = "closed"
    assert cluster._widget() is not None
    assert cluster._pool_refresh is None


async def test_the_widget_refetches_the_pool_counts_until_the_cluster_stops():
    gateway = FakeGateway({NAME: details(cpu_running=1, cpu_pending=0)})
    cluster = cluster_on(gateway)
    cluster._status_widget = SimpleNamespace(value="")
    refresh = asyncio.create_task(_refresh_widget_pools(weakref.ref(cluster), 0.01))
    await until(lambda: "cpu: 1 running," in cluster._status_widget.value)
    gateway.clusters[NAME] = details(cpu_running=3, cpu_pending=0)
    await until(lambda: "cpu: 3 running," in cluster._status_widget.value)
    cluster.status = "closed"
    await asyncio.wait_for(refresh, 1)


async def test_the_widget_refresh_lets_a_dropped_cluster_be_collected():
    cluster = cluster_on(FakeGateway({NAME: details()}))
    cluster._status_widget = SimpleNamespace(value="")
    ref = weakref.ref(cluster)
    refresh = asyncio.create_task(_refresh_widget_pools(ref, 0.01))
    await until(lambda: ref()._pools is not None)
    del cluster
    gc.collect()
    assert ref() is None
    await asyncio.wait_for(refresh, 1)


def test_the_widget_and_html_view_show_why_the_last_workers_ended_escaped():
    answer = details()
    answer["ended_workers"] = [
        {"worker": f"w{i}", "pool": "cpu", "reason": f"exited with code {i}"} for i in range(5)
    ]
    answer["ended_workers"][-1]["reason"] = "was killed by signal 9 <script>"
    cluster = cluster_on(FakeGateway({NAME: answer}))
    cluster.details()
    for view in (cluster._widget_status(), cluster._repr_html_()):
        assert "<b>Workers that ended:</b>" in view
        assert "<li>w4: was killed by signal 9 &lt;script&gt;</li>" in view
        assert "w1:" not in view  # the last three only
