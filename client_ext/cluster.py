"""``ElasticCluster``: a ``GatewayCluster`` that shows where its workers run and its dashboard."""

from __future__ import annotations

import asyncio
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
        if self._on_loop_thread():
            # Called on the client's own event loop (``__del__`` of a cluster whose
            # creation failed runs there): waiting for the loop from itself would hang
            # forever, so the stop runs as a task of that loop instead.
            if self.status != "closed":
                self._stop_task = asyncio.ensure_future(self._stop_internal(shutdown=shutdown))
            return None
        if self.status != "closed" and self.gateway.loop.asyncio_loop.is_running():
            self.gateway.sync(self._stop_internal, shutdown=shutdown)
        close_once(self.gateway, self.gateway.close)

    def _on_loop_thread(self) -> bool:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        gateway = getattr(self, "gateway", None)
        return gateway is not None and running is gateway.loop.asyncio_loop

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

    def _widget(self):
        """Upstream's ipywidget (scale/adapt controls, dashboard link), titled ElasticCluster."""
        if hasattr(self, "_cached_widget"):  # built already (None: no ipywidgets)
            return self._cached_widget
        box = super()._widget()
        if box is not None:
            box.children[0].value = "<h2>ElasticCluster</h2>"
        return box

    def _dashboard_html(self) -> str:
        if not self.dashboard_link:
            return "not available"
        link = html.escape(self.dashboard_link, quote=True)
        return f'<a href="{link}" target="_blank">{link}</a>'

    def _repr_html_(self) -> str:
        """Name, dashboard link (through the gateway proxy) and workers per pool."""
        pools = html.escape(self._pools_text() or "none yet")
        return (
            "<div style='background-color: #f2f2f2; display: inline-block; "
            "padding: 10px; border: 1px solid #999999;'>\n"
            "  <h3>ElasticCluster</h3>\n"
            "  <ul>\n"
            f"    <li><b>Name: </b>{html.escape(str(self.name))}\n"
            f"    <li><b>Dashboard: </b>{self._dashboard_html()}\n"
            f"    <li><b>Workers per pool: </b>{pools}\n"
            "  </ul>\n"
            "</div>\n"
        )
