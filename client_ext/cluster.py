"""``ElasticCluster``: a ``GatewayCluster`` that shows where its workers run."""

from __future__ import annotations

import html
from typing import Any

from dask_gateway import GatewayCluster

from .gateway import ElasticGateway, close_once, resolve_address_and_auth


class ElasticCluster(GatewayCluster):
    """Same API as ``dask_gateway.GatewayCluster``; adds per-pool worker counts."""

    def _init_internal(self, address=None, auth=None, **kwargs):
        address, auth = resolve_address_and_auth(address, auth)
        super()._init_internal(address=address, auth=auth, **kwargs)

    def close(self, shutdown: bool | None = None):
        """As ``GatewayCluster.close``; also safe to call again (or at interpreter exit)."""
        if self.asynchronous:
            return super().close(shutdown=shutdown)
        if self.status != "closed" and self.gateway.loop.asyncio_loop.is_running():
            self.gateway.sync(self._stop_internal, shutdown=shutdown)
        close_once(self.gateway, self.gateway.close)

    def details(self) -> dict[str, Any]:
        """The gateway's view of this cluster: workers per pool, events, failure reason."""
        return self.gateway.sync(ElasticGateway._cluster_details, self.gateway, self.name)

    def pool_summary(self) -> dict[str, dict[str, int]]:
        """``{pool: {"pending": n, "running": n, "stopping": n}}``."""
        pools = self.details()["pools"]
        return {
            name: {k: v for k, v in counts.items() if k != "pending_reasons"}
            for name, counts in pools.items()
        }

    def _pools_text(self) -> str:
        if self.asynchronous or self.name is None:
            return ""
        try:
            pools = self.pool_summary()
        except Exception:
            return ""
        return ", ".join(
            f"{name}: {c['running']} running"
            + (f" + {c['pending']} pending" if c["pending"] else "")
            for name, c in pools.items()
        )

    def __repr__(self) -> str:
        pools = self._pools_text()
        extra = f", workers=[{pools}]" if pools else ""
        return f"ElasticCluster<{self.name}, status={self.status}{extra}>"

    def _widget_status(self):
        status = super()._widget_status()
        pools = self._pools_text()
        if status is None or not pools:
            return status
        return status + f"<p><b>Workers per pool:</b> {html.escape(pools)}</p>"

    def _repr_html_(self) -> str:
        pools = html.escape(self._pools_text() or "none yet")
        return (
            super()
            ._repr_html_()
            .replace("  </ul>", f"    <li><b>Workers per pool: </b>{pools}\n  </ul>", 1)
        )
