"""Elastic Gateway's additions to the gateway HTTP API (under ``/api/elastic/v1``).

Authenticated by the gateway's own authenticator; a user sees only their own
clusters (admins see all), exactly like upstream's cluster routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from dask_gateway_server import routes
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.routes import api_handler

from .metrics import render_metrics

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

    from .backend import ElasticBackend

PREFIX = "/api/elastic/v1"


def _owned_cluster(request: web.Request) -> Cluster:
    backend = request.app["backend"]
    name = request.match_info["cluster_name"]
    cluster = backend.db.get_cluster(name)
    if cluster is None:
        raise web.HTTPNotFound(reason=f"Cluster {name} not found")
    user = request["user"]
    if not (user.admin or user.has_permissions(cluster)):
        # Same answer as for a missing cluster: do not reveal other users' cluster names.
        raise web.HTTPNotFound(reason=f"Cluster {name} not found")
    return cluster


def cluster_details(backend: ElasticBackend, cluster: Cluster) -> dict[str, Any]:
    """Workers per pool (pending with reasons, running, stopping), events, failure reason."""

    def no_workers() -> dict[str, Any]:
        return {"pending": 0, "running": 0, "stopping": 0, "pending_reasons": []}

    pools = {p.name: no_workers() for p in backend.pools_for(cluster)}
    for w in cluster.workers.values():
        if w.status >= JobStatus.STOPPED:
            continue
        entry = pools.setdefault(backend.pool_of(w).name, no_workers())
        if w.target > JobStatus.RUNNING or w.status == JobStatus.CLOSING:
            entry["stopping"] += 1
        elif w.status == JobStatus.RUNNING:
            entry["running"] += 1
        else:
            entry["pending"] += 1
            condition = backend.worker_conditions.get(w.name)
            if condition is not None and condition.reason:
                entry["pending_reasons"].append(condition.reason)
    return {
        "name": cluster.name,
        "status": cluster.model_status.name,
        "requested_workers": cluster.count,
        "options": cluster.options,
        "pools": pools,
        "failure_reason": cluster.state.get("failure_reason"),
        "events": backend.events.get(cluster.name),
    }


@api_handler(user_authenticated=True)
async def get_cluster_details(request: web.Request) -> web.Response:
    cluster = _owned_cluster(request)
    return web.json_response(cluster_details(request.app["backend"], cluster))


def vos_visible_to(backend: ElasticBackend, user) -> list:
    """Admins see every VO; users the VOs their groups give them (and the fallback VO)."""
    if user.admin:
        return list(backend.vo_table.values())
    mine = [vo for vo in backend.vo_table.values() if vo.groups & set(user.groups)]
    if not mine and backend.users_without_vo in backend.vo_table:
        mine = [backend.vo_table[backend.users_without_vo]]
    return mine


@api_handler(user_authenticated=True)
async def get_quota(request: web.Request) -> web.Response:
    backend = request.app["backend"]
    vos = {}
    for vo in vos_visible_to(backend, request["user"]):
        vos[vo.name] = {
            "limits": vo.limits(),
            "usage": backend.usage_of(vo).as_dict(),
            "accounting_group": vo.accounting_group,
        }
    return web.json_response({"quotas_enabled": bool(backend.vo_table), "vos": vos})


async def get_metrics(request: web.Request) -> web.Response:
    body, content_type = render_metrics(request.app["backend"])
    return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def quota_messages(request: web.Request, handler) -> web.StreamResponse:
    """Add what the VO grants to upstream's scale/adapt answers (the client shows it)."""
    response = await handler(request)
    route = request.match_info.route
    is_scale = route.handler is routes.scale_cluster
    if not (is_scale or route.handler is routes.adapt_cluster) or response.status != 200:
        return response
    backend = request.app["backend"]
    cluster = backend.db.get_cluster(request.match_info["cluster_name"])
    if cluster is None:
        return response
    body = await request.json()
    wanted = body.get("count") if is_scale else body.get("maximum")
    if not isinstance(wanted, int):
        return response
    message = backend.quota_message(cluster, wanted)
    if message is None:
        return response
    return web.json_response({"ok": False, "msg": message})


def add_routes(app: web.Application, backend: ElasticBackend) -> None:
    """Register the Elastic Gateway routes on the gateway's aiohttp application."""
    app.router.add_get(PREFIX + "/clusters/{cluster_name}", get_cluster_details)
    app.router.add_get(PREFIX + "/quota", get_quota)
    app.router.add_get(PREFIX + "/metrics", get_metrics)
    app.middlewares.append(quota_messages)
