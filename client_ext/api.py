"""Requests to the gateway's ``/api/elastic/v1`` (cluster details, quota).

Functions of an upstream ``Gateway`` rather than ``ElasticGateway`` methods: a
cluster's ``gateway`` is the plain ``Gateway`` that ``GatewayCluster`` creates,
and both ``ElasticGateway`` and ``ElasticCluster`` ask these questions.
"""

from __future__ import annotations

from typing import Any

from dask_gateway import Gateway

API_PREFIX = "/api/elastic/v1"


async def cluster_details(gateway: Gateway, cluster_name: str) -> dict[str, Any]:
    """Workers per pool (pending with reasons, running), recent events, failure reason."""
    resp = await gateway._request("GET", f"{gateway.address}{API_PREFIX}/clusters/{cluster_name}")
    return await resp.json()


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
