"""The Dask dashboard, through the gateway proxy, wherever the scheduler and workers run.

Each test opens ``cluster.dashboard_link`` and the workers page the way the analyst's browser
does: at the gateway's proxy address, with the client's own credentials. It checks that they
are distributed's Bokeh pages of *this* cluster's scheduler (its worker list names the
cluster's workers), and that the proxy stops routing them (404) once the cluster has stopped.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from client_ext import ElasticCluster, ElasticGateway

from ..conftest import wait_for, workers_of
from .test_htcondor import make_pool  # noqa: F401  (fixture)
from .test_kubernetes import kube_env, make_k8s  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e

# distributed renders its dashboard pages with Bokeh's server: the page loads BokehJS and
# embeds the Bokeh document; without bokeh in the scheduler's environment neither is there.
BOKEHJS = re.compile(r'<script src="static/js/bokeh\.min\.js\?v=\w+"></script>')
BOKEH_DOCUMENT = "Bokeh.embed.embed_items(docs_json, render_items)"


def fetch(gw: ElasticGateway, url: str) -> tuple[int, str]:
    """GET ``url`` with the client's auth; (status, body), error statuses included."""
    headers, _ = gw.auth.pre_request(None)
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def dashboard_base(gw: ElasticGateway, cluster: ElasticCluster) -> str:
    """``/clusters/<name>`` on the gateway's proxy, from the link the client was given."""
    assert cluster.dashboard_link == f"{gw.address}/clusters/{cluster.name}/status"
    return cluster.dashboard_link.removesuffix("/status")


def assert_dashboard_served(gw: ElasticGateway, cluster: ElasticCluster) -> None:
    """Status and workers pages are Bokeh documents of this cluster's scheduler."""
    base = dashboard_base(gw, cluster)
    for page in ("status", "workers"):
        status, body = fetch(gw, f"{base}/{page}")
        assert status == 200, f"/{page}: {status} {body[:300]}"
        assert BOKEHJS.search(body) and BOKEH_DOCUMENT in body, f"/{page} is no Bokeh page"
    # The script the pages load, by its relative URL, comes through the same route.
    status, script = fetch(gw, f"{base}/static/js/bokeh.min.js")
    assert status == 200 and "Bokeh" in script[:2000]
    # And it is this cluster's scheduler: its worker list names the cluster's workers.
    status, listing = fetch(gw, f"{base}/info/main/workers.html")
    assert status == 200
    for address in cluster.scheduler_info["workers"]:
        assert address.removeprefix("tls://") in listing


def assert_dashboard_gone_after_stop(gw: ElasticGateway, cluster: ElasticCluster) -> None:
    """After a stop the proxy no longer routes the cluster's dashboard: 404 for each page."""
    base = dashboard_base(gw, cluster)
    cluster.shutdown()
    for page in ("status", "workers"):
        wait_for(
            lambda page=page: fetch(gw, f"{base}/{page}")[0] == 404,
            timeout=30,
            what=f"/{page} to answer 404 after the stop",
        )


@pytest.mark.parametrize("fork_server", [True, False], ids=["forked", "own-process"])
def test_local_scheduler_serves_the_dashboard_through_the_proxy_until_it_stops(
    gateways, fork_server
):
    gateway = gateways.start(f"c.LocalLauncher.fork_server = {fork_server}\n")
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(1)
        wait_for(lambda: workers_of(cluster) == 1, what="1 local worker")
        assert_dashboard_served(gw, cluster)
        assert_dashboard_gone_after_stop(gw, cluster)
    finally:
        gw.close()


def test_the_cluster_widget_and_html_link_the_dashboard(gw):
    pytest.importorskip("ipywidgets")
    cluster = gw.new_cluster()
    link = cluster.dashboard_link
    assert link and link.endswith(f"/clusters/{cluster.name}/status")
    assert f'<a href="{link}" target="_blank">{link}</a>' in cluster._repr_html_()
    widget_html = " ".join(getattr(child, "value", "") for child in cluster._widget().children)
    assert "<h2>ElasticCluster</h2>" in widget_html
    assert f'<a href="{link}" target="_blank">{link}</a>' in widget_html
    cluster.shutdown()


def test_kubernetes_scheduler_pod_serves_the_dashboard_through_the_proxy_until_it_stops(
    make_k8s,  # noqa: F811
):
    k = make_k8s()
    cluster = k.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 pod worker")
    assert_dashboard_served(k.gw, cluster)
    assert_dashboard_gone_after_stop(k.gw, cluster)


def test_cluster_with_htcondor_workers_serves_the_dashboard_through_the_proxy_until_it_stops(
    make_pool,  # noqa: F811
):
    pool = make_pool(slots=2)
    cluster = pool.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 HTCondor worker")
    [job] = pool.jobs(f'DaskGatewayCluster == "{cluster.name}"')
    [worker] = cluster.scheduler_info["workers"].values()
    assert worker["name"] == job["DaskGatewayWorker"]  # the worker listed is the job's
    assert_dashboard_served(pool.gw, cluster)
    assert_dashboard_gone_after_stop(pool.gw, cluster)
