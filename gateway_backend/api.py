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
    pools: dict[str, dict[str, Any]] = {
        p.name: {"pending": 0, "running": 0, "stopping": 0, "pending_reasons": []}
        for p in backend.pools_for(cluster)
    }
    for w in cluster.workers.values():
        if w.status >= JobStatus.STOPPED:
            continue
        entry = pools.setdefault(
            backend.pool_of(w).name,
            {"pending": 0, "running": 0, "stopping": 0, "pending_reasons": []},
        )
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


async def _owned_or_none(request: web.Request):
    """The cluster of a scale/adapt request if the requesting user may act on it."""
    backend = request.app["backend"]
    cluster = backend.db.get_cluster(request.match_info["cluster_name"])
    if cluster is None:
        return None
    seen = {}

    async def capture(req: web.Request) -> web.Response:
        seen["user"] = req["user"]
        return web.Response()

    try:
        # The authenticator's own path: its cookie cache makes this cheap for a client.
        await request.app["authenticator"].authenticate_and_handle(request, capture)
    except web.HTTPException:
        return None  # the route itself answers 401
    user = seen.get("user")
    if user is None or not (user.admin or user.has_permissions(cluster)):
        return None
    return cluster


@web.middleware
async def scale_and_quota(request: web.Request, handler) -> web.StreamResponse:
    """Around upstream's scale/adapt routes: retire by pool order first; then add what the
    VO grants to the answer (the client shows it as a warning)."""
    route = request.match_info.route
    is_scale = route.handler is routes.scale_cluster
    if not (is_scale or route.handler is routes.adapt_cluster) or request.method != "POST":
        return await handler(request)
    backend = request.app["backend"]
    cluster = None
    if is_scale:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        count = body.get("count") if isinstance(body, dict) else None
        if isinstance(count, int) and count >= 0:
            cluster = await _owned_or_none(request)
            if cluster is not None and cluster.status == JobStatus.RUNNING:
                await backend.scale_down_by_pool(cluster, count)
    response = await handler(request)
    if response.status != 200:
        return response
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
    app.middlewares.append(scale_and_quota)
