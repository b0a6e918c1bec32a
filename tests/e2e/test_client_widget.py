"""The cluster widget's per-pool counts against a real gateway, refreshed on a timer."""

from __future__ import annotations

import pytest

from ..conftest import wait_for, workers_of

pytestmark = pytest.mark.e2e


def test_the_widget_shows_the_gateways_pool_counts_as_workers_start(gw):
    pytest.importorskip("ipywidgets")
    cluster = gw.new_cluster()
    cluster.pool_refresh_interval = 0.2
    cluster._widget()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
    wait_for(
        lambda: "local: 2 running" in cluster._status_widget.value,
        what="the widget to show 2 running workers in the local pool",
    )
    cluster.shutdown()
