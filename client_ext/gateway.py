"""``ElasticGateway``: ``dask_gateway.Gateway`` with facility-friendly defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dask.config
from dask_gateway import Gateway
from dask_gateway.auth import BasicAuth, GatewayAuth, JupyterHubAuth

CLIENT_FILE = "client.json"


def default_state_directory() -> Path:
    """Where ``elastic-gateway serve`` keeps its state on this machine by default."""
    if os.environ.get("ELASTIC_GATEWAY_STATE_DIR"):
        return Path(os.environ["ELASTIC_GATEWAY_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "elastic-gateway"


def _embedded_client_file() -> dict[str, str] | None:
    try:
        return json.loads((default_state_directory() / CLIENT_FILE).read_text())
    except (OSError, ValueError):
        return None


def resolve_address_and_auth(
    address: str | None = None, auth: GatewayAuth | str | None = None
) -> tuple[str | None, GatewayAuth | str | None]:
    """Fill in the gateway address and auth the way a facility notebook expects.

    Address: the argument, ``$ELASTIC_GATEWAY_ADDRESS``, dask config
    ``gateway.address``, then the local embedded gateway. Auth: the argument,
    JupyterHub token auth when ``$JUPYTERHUB_API_TOKEN`` is set, dask config
    ``gateway.auth.type``, then the local embedded gateway's credentials.
    """
    embedded = None
    if address is None:
        address = os.environ.get("ELASTIC_GATEWAY_ADDRESS") or dask.config.get(
            "gateway.address", None
        )
    if address is None:
        embedded = _embedded_client_file()
        address = embedded and embedded.get("address")
    if auth is None:
        if os.environ.get("JUPYTERHUB_API_TOKEN"):
            auth = JupyterHubAuth()
        elif dask.config.get("gateway.auth.type", None) is None:
            embedded = embedded or _embedded_client_file()
            if embedded and address and embedded.get("address") == address.rstrip("/"):
                auth = BasicAuth(embedded["username"], embedded["password"])
    return address, auth


def close_once(gateway: Gateway, close) -> None:
    """Run ``close`` unless already done, then drop the stopped loop runner.

    Upstream's ``Gateway.__del__`` closes again and raises once the loop runner
    has stopped; without ``_loop_runner`` it skips that.
    """
    if getattr(gateway, "_loop_runner", None) is None:
        return
    close()
    del gateway._loop_runner


class ElasticGateway(Gateway):
    """A ``dask_gateway.Gateway`` whose clusters are ``ElasticCluster``s.

    Every argument of ``Gateway`` works the same; ``address`` and ``auth``
    default as described in ``resolve_address_and_auth``.
    """

    def __init__(self, address: str | None = None, *args: Any, auth=None, **kwargs: Any):
        address, auth = resolve_address_and_auth(address, auth)
        super().__init__(address, *args, auth=auth, **kwargs)

    def close(self) -> None:
        """Close the client; unlike upstream, closing twice (e.g. again at exit) is harmless."""
        close_once(self, super().close)

    def _cluster_kwargs(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "proxy_address": self.proxy_address,
            "public_address": self._public_address,
            "auth": self.auth,
            "asynchronous": self.asynchronous,
            "loop": self.loop,
        }

    def new_cluster(self, cluster_options=None, shutdown_on_close: bool = True, **kwargs):
        """Start a cluster and wait for it (as ``Gateway.new_cluster``); an ``ElasticCluster``."""
        from .cluster import ElasticCluster

        return ElasticCluster(
            cluster_options=cluster_options,
            shutdown_on_close=shutdown_on_close,
            **self._cluster_kwargs(),
            **kwargs,
        )

    def connect(self, cluster_name: str, shutdown_on_close: bool = False):
        """Connect to a running cluster by name; an ``ElasticCluster``."""
        from .cluster import ElasticCluster

        return ElasticCluster.from_name(
            cluster_name, shutdown_on_close=shutdown_on_close, **self._cluster_kwargs()
        )

    async def _cluster_details(self, cluster_name: str) -> dict[str, Any]:
        url = f"{self.address}/api/elastic/v1/clusters/{cluster_name}"
        resp = await self._request("GET", url)
        return await resp.json()

    def cluster_details(self, cluster_name: str, **kwargs: Any) -> dict[str, Any]:
        """Workers per pool (pending with reasons, running), recent events, failure reason."""
        return self.sync(self._cluster_details, cluster_name, **kwargs)

    async def _quota(self) -> dict[str, Any]:
        resp = await self._request("GET", f"{self.address}/api/elastic/v1/quota")
        return await resp.json()

    def quota(self, **kwargs: Any) -> dict[str, Any]:
        """Your VOs' limits and current usage (every VO's, for admins).

        ``{"quotas_enabled": bool, "vos": {name: {"limits": {...}, "usage": {...},
        "accounting_group": str | None}}}``; memory in bytes.
        """
        return self.sync(self._quota, **kwargs)
