"""Requests to the gateway's ``/api/elastic/v1`` (cluster details, quota).

Functions of an upstream ``Gateway`` rather than ``ElasticGateway`` methods: a
cluster's ``gateway`` is the plain ``Gateway`` that ``GatewayCluster`` creates,
and both ``ElasticGateway`` and ``ElasticCluster`` ask these questions.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import aiohttp
from dask_gateway import Gateway

API_PREFIX = "/api/elastic/v1"


class GatewayRefused(aiohttp.ClientResponseError):
    """The gateway refused who you are (HTTP 401/403); the message says why, what to change."""


class _ResponseWithReasons(aiohttp.ClientResponse):
    """Upstream's client raises 401/403 with the HTTP reason phrase, which proxies (the
    gateway's Go proxy, JupyterHub's) replace with "Forbidden"; the gateway's own message
    is in the JSON body it reads first, so raise that."""

    gateway_error: str | None = None

    async def json(self, *args: Any, **kwargs: Any) -> Any:
        data = await super().json(*args, **kwargs)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            self.gateway_error = data["error"]
        return data

    def raise_for_status(self) -> None:
        if self.status in (401, 403) and self.gateway_error:
            raise GatewayRefused(
                self.request_info,
                self.history,
                status=self.status,
                message=self.gateway_error,
                headers=self.headers,
            )
        super().raise_for_status()


def use_gateway_messages(gateway: Gateway) -> None:
    """Give ``gateway`` the HTTP session upstream would make, raising ``GatewayRefused``
    with the gateway's message on 401/403. Call on its loop, before its first request."""
    if gateway._session is None:
        gateway._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # as upstream: gateways on IPs
            response_class=_ResponseWithReasons,
        )


async def cluster_details(gateway: Gateway, cluster_name: str) -> dict[str, Any]:
    """Workers per pool (pending with reasons, running), recent events, failure reason."""
    resp = await gateway._request("GET", f"{gateway.address}{API_PREFIX}/clusters/{cluster_name}")
    return await resp.json()


async def cluster_logs(
    gateway: Gateway, cluster_name: str, worker: str | None = None, tail: int | None = None
) -> dict[str, str]:
    """The scheduler's and each worker's log by name (stopped ones too), or ``worker``'s."""
    params = {k: str(v) for k, v in (("worker", worker), ("tail", tail)) if v is not None}
    query = f"?{urlencode(params)}" if params else ""
    url = f"{gateway.address}{API_PREFIX}/clusters/{cluster_name}/logs{query}"
    resp = await gateway._request("GET", url)
    return (await resp.json())["logs"]


async def quota(gateway: Gateway) -> dict[str, Any]:
    """The caller's VOs' limits and current usage (every VO's, for admins)."""
    resp = await gateway._request("GET", f"{gateway.address}{API_PREFIX}/quota")
    return await resp.json()


async def profiles(gateway: Gateway) -> dict[str, Any]:
    """The profiles the caller may choose: sizes, pools, environment, lifetimes."""
    resp = await gateway._request("GET", f"{gateway.address}{API_PREFIX}/profiles")
    return await resp.json()


async def clusters(gateway: Gateway) -> list[dict[str, Any]]:
    """The caller's own active clusters: age, workers, cores, last client activity."""
    resp = await gateway._request("GET", f"{gateway.address}{API_PREFIX}/clusters")
    return (await resp.json())["clusters"]
