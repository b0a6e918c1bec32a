"""``ElasticGateway``: ``dask_gateway.Gateway`` with facility-friendly defaults."""

from __future__ import annotations

import os
from typing import Any

import dask.config
from dask_gateway import Gateway
from dask_gateway.auth import GatewayAuth

from . import api
from .auth import hub_service_address, resolve_address_and_auth
from .closing import close_once
from .cluster import ElasticCluster
from .listing import ElasticClusterReport, select


class ElasticGateway(Gateway):
    """A ``dask_gateway.Gateway`` whose clusters are ``ElasticCluster``s.

    Every argument of ``Gateway`` works the same; ``address`` and ``auth``
    default as described in ``resolve_address_and_auth``.
    """

    def __init__(
        self,
        address: str | None = None,
        *args: Any,
        auth: GatewayAuth | str | None = None,
        **kwargs: Any,
    ) -> None:
        derived = address is None
        address, auth = resolve_address_and_auth(address, auth)
        proxy_address = args[0] if args else kwargs.get("proxy_address")
        if derived and address == hub_service_address() and proxy_address is None:
            if dask.config.get("gateway.proxy-address", None) is None:
                raise ValueError(
                    f"found the gateway at {address} through JupyterHub, but not its TLS "
                    "proxy address (schedulers are reached over TLS, which the hub's proxy "
                    "does not carry): set DASK_GATEWAY__PROXY_ADDRESS (dask config "
                    "gateway.proxy-address), e.g. gateway://<gateway host>:<tls port>, or "
                    "pass proxy_address="
                )
        super().__init__(address, *args, auth=auth, **kwargs)

    async def _request(self, method: str, url: str, json: Any = None) -> Any:
        api.use_gateway_messages(self)  # refusals (401/403) with the gateway's message
        return await super()._request(method, url, json=json)

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

    def new_cluster(
        self,
        cluster_options=None,
        shutdown_on_close: bool = True,
        forward_credentials: bool | None = None,
        **kwargs: Any,
    ) -> ElasticCluster:
        """Start a cluster and wait for it (as ``Gateway.new_cluster``); an ``ElasticCluster``.

        Your X509 proxy and bearer token, where grid tools find them, are forwarded to
        its workers (``ElasticCluster.forward_credentials``), unless
        ``forward_credentials=False`` or ``$ELASTIC_GATEWAY_FORWARD_CREDENTIALS=0``.
        """
        cluster = ElasticCluster(
            cluster_options=cluster_options,
            shutdown_on_close=shutdown_on_close,
            **self._cluster_kwargs(),
            **kwargs,
        )
        if forward_credentials is None:
            forward_credentials = os.environ.get("ELASTIC_GATEWAY_FORWARD_CREDENTIALS") != "0"
        if forward_credentials and not self.asynchronous:
            cluster.forward_credentials()
        return cluster

    def connect(self, cluster_name: str, shutdown_on_close: bool = False) -> ElasticCluster:
        """Connect to a running cluster by name; an ``ElasticCluster``."""
        return ElasticCluster.from_name(
            cluster_name, shutdown_on_close=shutdown_on_close, **self._cluster_kwargs()
        )

    def cluster_details(self, cluster_name: str, **kwargs: Any) -> dict[str, Any]:
        """Workers per pool (pending with reasons, running), recent events, failure reason."""
        return self.sync(api.cluster_details, self, cluster_name, **kwargs)

    def cluster_logs(
        self, cluster_name: str, worker: str | None = None, tail: int | None = None
    ) -> dict[str, str]:
        """Logs of a cluster you own (also one stopped a while ago): see ``ElasticCluster.logs``."""
        return self.sync(api.cluster_logs, self, cluster_name, worker, tail)

    def quota(self, **kwargs: Any) -> dict[str, Any]:
        """Your VOs' limits and current usage (every VO's, for admins).

        ``{"quotas_enabled": bool, "vos": {name: {"limits": {...}, "usage": {...},
        "accounting_group": str | None}}}``; memory in bytes.
        """
        return self.sync(api.quota, self, **kwargs)

    def profiles(self, **kwargs: Any) -> list[dict[str, Any]]:
        """The profiles you may choose (``new_cluster(profile=...)``), in order: the
        first is the default. Each with its environment, sizes, pools and lifetimes."""
        return self.sync(api.profiles, self, **kwargs)["profiles"]

    async def _elastic_clusters(self, status=None) -> list[ElasticClusterReport]:
        reports = await self._clusters(status=status)
        summaries = {s["name"]: s for s in await api.clusters(self)}
        return [ElasticClusterReport.of(r, summaries.get(r.name)) for r in reports]

    def list_clusters(self, status=None, **kwargs: Any) -> list[ElasticClusterReport]:
        """Your clusters (as ``Gateway.list_clusters``), each also with its profile, age,
        workers, cores, memory and last client activity: what tells a forgotten one."""
        return self.sync(self._elastic_clusters, status=status, **kwargs)

    async def _stop_clusters(self, **filters: Any) -> list[str]:
        names = select(await api.clusters(self), **filters)
        for name in names:
            await self._stop_cluster(name)
        return names

    def stop_clusters(
        self,
        *,
        profile: str | None = None,
        older_than: float | None = None,
        no_client_for: float | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Stop every running cluster of yours (only yours, even for admins) that matches
        all filters given: its ``profile``, ``older_than`` seconds, no client connected
        for ``no_client_for`` seconds. Returns the names of the clusters stopped."""
        filters = {"profile": profile, "older_than": older_than, "no_client_for": no_client_for}
        return self.sync(self._stop_clusters, **filters, **kwargs)
