"""Prometheus metrics per VO, computed from the cluster records at scrape time.

Derived on every scrape rather than counted along the way, so the numbers are
right after a restart and can never drift from what the quota checks see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .views import GatewayViews

RESOURCES = (("cores", "max_cores"), ("memory_bytes", "max_memory"), ("gpus", "max_gpus"))


class VOCollector:
    """Usage and limits per VO, workers per pool, and quota refusals."""

    def __init__(self, views: GatewayViews) -> None:
        self.views = views

    def collect(self):
        quotas, pool_book = self.views.quotas, self.views.pools
        used = GaugeMetricFamily(
            "elastic_gateway_vo_usage", "Resources a VO's clusters hold", labels=["vo", "resource"]
        )
        limit = GaugeMetricFamily(
            "elastic_gateway_vo_limit", "A VO's configured limit", labels=["vo", "resource"]
        )
        clusters = GaugeMetricFamily(
            "elastic_gateway_vo_clusters", "Active clusters per VO", labels=["vo"]
        )
        for vo in quotas.vos.values():
            usage = quotas.usage_of(vo)
            values = {"cores": usage.cores, "memory_bytes": usage.memory, "gpus": usage.gpus}
            for resource, key in RESOURCES:
                used.add_metric([vo.name, resource], values[resource])
                if getattr(vo, key) is not None:
                    limit.add_metric([vo.name, resource], getattr(vo, key))
            clusters.add_metric([vo.name], usage.clusters)
        yield from (used, limit, clusters)

        refusals = CounterMetricFamily(
            "elastic_gateway_quota_refusals",
            "Requests refused or clamped by a VO quota",
            labels=["vo", "kind"],
        )
        for (vo, kind), n in sorted(quotas.refusals.items()):
            refusals.add_metric([vo, kind], n)
        yield refusals

        pools = GaugeMetricFamily(
            "elastic_gateway_pool_workers", "Active workers per pool", labels=["pool"]
        )
        usage = self.views.pool_usage()
        for pool in pool_book.pools:
            pools.add_metric([pool.name], usage.get(pool.name, 0))
        yield pools


def render_metrics(views: GatewayViews) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VOCollector(views))
    return generate_latest(registry), CONTENT_TYPE_LATEST
