"""``ElasticCluster``: a ``GatewayCluster`` that shows where its workers run and its dashboard."""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import logging
import weakref
from typing import Any

from dask_gateway import GatewayCluster
from dask_gateway.client import GatewayClusterError

from . import api
from .auth import resolve_address_and_auth
from .closing import close_once
from .credentials import forward as forward_credentials_to

logger = logging.getLogger(__name__)

PoolCounts = dict[str, dict[str, int]]
FAILURE_LOG_LINES = 20
ENDED_SHOWN = 3  # workers that ended, in the widget and the HTML view


def pool_counts(details: dict[str, Any]) -> PoolCounts:
    """``{pool: {"pending": n, "running": n, "stopping": n}}`` from a cluster's details."""
    return {
        name: {k: v for k, v in counts.items() if k != "pending_reasons"}
        for name, counts in details["pools"].items()
    }


def pools_text(pools: PoolCounts) -> str:
    """One line for people, e.g. ``"cpu: 2 running + 1 pending, gpu: 0 running"``."""
    return ", ".join(
        f"{name}: {c['running']} running" + (f" + {c['pending']} pending" if c["pending"] else "")
        for name, c in pools.items()
    )


class ElasticCluster(GatewayCluster):
    """Same API as ``dask_gateway.GatewayCluster``; adds per-pool worker counts.

    ``repr`` and the HTML view show the counts last fetched (by ``details()``,
    ``pool_summary()`` or the widget's refresh) and never ask the gateway
    themselves: a repr runs in debuggers, logs and tracebacks.
    """

    # Seconds between refetches of the per-pool counts while the widget exists.
    pool_refresh_interval: float = 5.0
    # Class-level defaults, so repr works on a cluster whose __init__ failed early.
    _pools: PoolCounts | None = None
    _profile: str | None = None  # "name (environment)", from the last details()
    _ended: list | None = None  # workers that ended, with reasons, from the last details()
    _credentials: dict | None = None  # what forward_credentials() sent, no content
    _refresher: Any = None
    _pool_refresh: concurrent.futures.Future | None = None

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
                self._close_on_loop = asyncio.ensure_future(self._stop_internal(shutdown=shutdown))
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
        if gateway is None or getattr(gateway, "_loop_runner", None) is None:
            return False  # closed already: its loop is not running anywhere
        return running is gateway.loop.asyncio_loop

    async def _start_async(self) -> None:
        api.use_gateway_messages(self.gateway)
        created_here = self.status == "created"
        try:
            await super()._start_async()
        except GatewayClusterError as exc:
            raise GatewayClusterError(await self._why_it_failed(str(exc))) from None
        if created_here and not self.shutdown_on_close and self.status == "running":
            await self._detach()
        try:  # the profile and pools for repr and the widget from the start
            await self._details()
        except Exception:
            logger.debug("no details of cluster %s yet", self.name, exc_info=True)

    async def _detach(self) -> None:
        """Created with ``shutdown_on_close=False``: ask the scheduler for the longer
        ``detached_no_client_timeout``, since you mean to come back to this cluster."""
        try:
            answer = await self.scheduler_comm.elastic_gateway_detach()
        except Exception:  # a gateway without the no-client check: nothing to opt into
            logger.debug("cluster %s has no detached timeout", self.name, exc_info=True)
            return
        limit = answer.get("no_client_timeout")
        logger.info(
            "Cluster %s outlives this notebook; stopped after %s without a client",
            self.name,
            f"{limit:g} s" if limit else "never",
        )

    async def _why_it_failed(self, message: str) -> str:
        """Upstream's "failed to start, see logs" with the reason and the scheduler's log."""
        if not getattr(self, "name", None):
            return message
        try:
            details = await api.cluster_details(self.gateway, self.name)
            logs = await api.cluster_logs(self.gateway, self.name, "scheduler", FAILURE_LOG_LINES)
        except Exception:
            logger.debug("no details of failed cluster %s", self.name, exc_info=True)
            return message
        reason = details.get("failure_reason") or "no reason recorded"
        log = logs.get("scheduler", "").strip()
        if not log:
            return f"Cluster {self.name} failed to start: {reason}"
        return (
            f"Cluster {self.name} failed to start: {reason}\n"
            f"Last lines of the scheduler's log:\n{log}"
        )

    async def _stop_async(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()
        if self._pool_refresh is not None:
            self._pool_refresh.cancel()
        await super()._stop_async()

    async def _details(self) -> dict[str, Any]:
        details = await api.cluster_details(self.gateway, self.name)
        self._pools = pool_counts(details)
        self._ended = details.get("ended_workers") or []
        if details.get("profile"):
            self._profile = f"{details['profile']} ({details['environment']})"
        return details

    def details(self) -> dict[str, Any]:
        """The gateway's view of this cluster: workers per pool, events, failure reason,
        plus ``credentials``: what this notebook forwarded, and when each expires.

        Its per-pool counts are what ``repr`` shows from then on.
        """
        details = self.gateway.sync(self._details)
        details["credentials"] = dict(self._credentials or {})
        return details

    def forward_credentials(
        self,
        x509: str | None = None,
        token: str | bytes | None = None,
        files: dict | None = None,
        discover: bool = True,
        refresh_every: float | None = None,
    ) -> dict[str, dict]:
        """Send your data credentials to every worker (and to workers that join later).

        Without arguments, the X509 proxy and bearer token found where grid tools look
        (``$X509_USER_PROXY``, ``$BEARER_TOKEN_FILE``, ...); or give ``x509=<path>``,
        ``token=<token>``, ``files={"name": path_or_bytes}``. On workers they are 0600
        files with ``X509_USER_PROXY``/``BEARER_TOKEN_FILE`` pointing at them. Calling
        again replaces them everywhere without restarting workers; ``refresh_every``
        seconds re-reads the discovered ones while this notebook runs and forwards
        them when they changed. Returns, per file, its source and expiry (no content).
        """
        summary = forward_credentials_to(self, x509, token, files, discover)
        self._credentials = summary
        if refresh_every:
            from .credentials import Refresher

            if self._refresher is not None:
                self._refresher.stop()
            self._refresher = Refresher(self, refresh_every, x509, token, files, discover)
        return summary

    def logs(self, worker: str | None = None, tail: int | None = None) -> dict[str, str]:
        """The scheduler's and every worker's log, by name (``"scheduler"``, worker names).

        Includes workers that stopped or died and, after the cluster stopped, everything
        for a while (the gateway's ``log_keep_for``): the place to look after a
        ``KilledWorker``. ``worker`` picks one (``"scheduler"`` for the scheduler),
        ``tail`` keeps the last lines of each. Credentials are removed by the gateway.
        """
        return self.gateway.sync(api.cluster_logs, self.gateway, self.name, worker, tail)

    async def _pool_summary(self) -> PoolCounts:
        return pool_counts(await self._details())

    def pool_summary(self) -> PoolCounts:
        """``{pool: {"pending": n, "running": n, "stopping": n}}``, asked of the gateway now."""
        return self.gateway.sync(self._pool_summary)

    def __repr__(self) -> str:
        name, status = getattr(self, "name", None), getattr(self, "status", None)
        pools = f", workers=[{pools_text(self._pools)}]" if self._pools else ""
        profile = f", profile={self._profile.split(' ')[0]}" if self._profile else ""
        return f"ElasticCluster<{name}, status={status}{profile}{pools}>"

    def _widget_status(self) -> str | None:
        # Upstream calls this on the event loop whenever a worker joins or leaves:
        # a request from here would wait on that very loop, so only known counts show.
        status = super()._widget_status()
        if not self._pools:
            return status
        pools = html.escape(pools_text(self._pools))
        return (status or "") + f"<p><b>Workers per pool:</b> {pools}</p>" + self._ended_html()

    def _ended_html(self) -> str:
        """The last workers that ended and why (``cluster.details()["ended_workers"]``)."""
        if not self._ended:
            return ""
        items = "".join(
            f"<li>{html.escape(str(e.get('worker')))}: {html.escape(str(e.get('reason')))}</li>"
            for e in self._ended[-ENDED_SHOWN:]
        )
        return f"<p><b>Workers that ended:</b></p><ul>{items}</ul>"

    def _widget(self):
        """Upstream's ipywidget (scale/adapt controls, dashboard link), titled ElasticCluster.

        Its per-pool counts are refetched every ``pool_refresh_interval`` seconds.
        """
        if hasattr(self, "_cached_widget"):  # built already (None: no ipywidgets)
            return self._cached_widget
        box = super()._widget()
        if box is None:
            return None
        box.children[0].value = "<h2>ElasticCluster</h2>"
        if self.status == "running":  # a closed cluster's loop is gone
            self._pool_refresh = asyncio.run_coroutine_threadsafe(
                _refresh_widget_pools(weakref.ref(self), self.pool_refresh_interval),
                self.loop.asyncio_loop,
            )
        return box

    def _credentials_html(self) -> str:
        line = _credentials_line(self._credentials)
        return f"    <li><b>Credentials: </b>{html.escape(line)}\n" if line else ""

    def _dashboard_html(self) -> str:
        if not self.dashboard_link:
            return "not available"
        link = html.escape(self.dashboard_link, quote=True)
        return f'<a href="{link}" target="_blank">{link}</a>'

    def _repr_html_(self) -> str:
        """Name, dashboard link (through the gateway proxy) and the last known workers per pool."""
        if self._pools is None:
            pools = "see <code>cluster.details()</code>"
        else:
            pools = html.escape(pools_text(self._pools) or "none")
        return (
            "<div style='background-color: #f2f2f2; display: inline-block; "
            "padding: 10px; border: 1px solid #999999;'>\n"
            "  <h3>ElasticCluster</h3>\n"
            "  <ul>\n"
            f"    <li><b>Name: </b>{html.escape(str(self.name))}\n"
            f"    <li><b>Dashboard: </b>{self._dashboard_html()}\n"
            + (f"    <li><b>Profile: </b>{html.escape(self._profile)}\n" if self._profile else "")
            + f"    <li><b>Workers per pool: </b>{pools}\n"
            + self._credentials_html()
            + "  </ul>\n"
            + self._ended_html()
            + "</div>\n"
        )


def _credentials_line(credentials: dict | None) -> str:
    parts = [
        f"{name} (expires {info['expires'] or 'unknown'})"
        for name, info in (credentials or {}).items()
    ]
    return ", ".join(parts)


async def _refresh_widget_pools(cluster_ref: weakref.ref[ElasticCluster], interval: float) -> None:
    """Refetch the per-pool counts into the widget every ``interval`` s while the cluster runs.

    Upstream redraws the widget only when the scheduler reports a worker joining or
    leaving; the gateway's counts (pending workers above all) change without that.
    Holds the cluster only weakly between refreshes, so a dropped cluster is still collected.
    """
    while (cluster := cluster_ref()) is not None and cluster.status == "running":
        try:
            await cluster._details()
        except Exception:  # the gateway is briefly unreachable: keep the last counts
            logger.debug("refreshing the pool counts of %s failed", cluster.name, exc_info=True)
        else:
            if (status := cluster._widget_status()) is not None:
                cluster._status_widget.value = status
        del cluster
        await asyncio.sleep(interval)
