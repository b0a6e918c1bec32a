"""Elastic Gateway's additions to the gateway HTTP API (under ``/api/elastic/v1``).

Authenticated by the gateway's own authenticator; a user sees only their own
clusters (admins see all), exactly like upstream's cluster routes. The metrics
are for admins and for a Prometheus scraper holding the configured bearer token.
The routes read the gateway through ``GatewayViews`` (``app["elastic"]``).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web
from dask_gateway_server import routes
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.routes import api_handler
from dask_gateway_server.utils import timestamp

from .api_guards import guard_user_names, refuse_malformed_requests
from .cluster_summary import cluster_summary
from .log_store import PROCESS_NAME
from .metrics import render_metrics
from .scheduler_reports import BadReport, parse_report

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

    from .views import GatewayViews

PREFIX = "/api/elastic/v1"


def _views(request: web.Request) -> GatewayViews:
    return request.app["elastic"]


def _owned_cluster(request: web.Request) -> Cluster:
    name = request.match_info["cluster_name"]
    cluster = _views(request).get_cluster(name)
    user = request["user"]
    if cluster is None or not (user.admin or user.has_permissions(cluster)):
        # The same answer for another user's cluster: names of others do not leak.
        raise web.HTTPNotFound(reason=f"Cluster {name} not found")
    return cluster


def cluster_details(views: GatewayViews, cluster: Cluster) -> dict[str, Any]:
    """Workers per pool (pending with reasons, running, stopping), events, failure reason."""

    def no_workers() -> dict[str, Any]:
        return {"pending": 0, "running": 0, "stopping": 0, "pending_reasons": []}

    pools = {p.name: no_workers() for p in views.pools.pools_for(cluster.options)}
    for w in cluster.workers.values():
        if w.status >= JobStatus.STOPPED:
            continue
        entry = pools.setdefault(views.pools.pool_of(w).name, no_workers())
        if w.target > JobStatus.RUNNING or w.status == JobStatus.CLOSING:
            entry["stopping"] += 1
        elif w.status == JobStatus.RUNNING:
            entry["running"] += 1
        else:
            entry["pending"] += 1
            condition = views.conditions.get(w.name)
            if condition is not None and condition.reason:
                entry["pending_reasons"].append(condition.reason)
    return {
        "name": cluster.name,
        "status": cluster.model_status.name,
        "requested_workers": cluster.count,
        "options": cluster.options,
        "profile": cluster.config.get("profile") or None,
        "environment": environment_text(cluster.config),
        "pools": pools,
        "failure_reason": cluster.state.get("failure_reason"),
        "stop_reason": cluster.state.get("stop_reason"),
        "events": views.events.get(cluster.name),
        "ended_workers": views.fates.ended(cluster.name),
    }


def environment_text(config: Any) -> str:
    """The software a cluster runs in, as its config (from its profile) says."""
    parts = []
    if config.get("image"):
        parts.append(f"image {config['image']}")
    if config.get("python"):
        parts.append(f"Python {config['python']}")
    return ", ".join(parts) or "the gateway's default environment"


@api_handler(user_authenticated=True)
async def get_cluster_details(request: web.Request) -> web.Response:
    cluster = _owned_cluster(request)
    return web.json_response(cluster_details(_views(request), cluster))


MAX_TAIL = 100_000


def _logs_query(request: web.Request) -> tuple[str | None, int | None]:
    """``worker`` and ``tail`` of a logs request, checked (422 names the parameter)."""
    worker = request.query.get("worker")
    if worker is not None and not PROCESS_NAME.fullmatch(worker):
        raise web.HTTPUnprocessableEntity(
            reason="worker must be a worker name (as in cluster.details()) or 'scheduler'"
        )
    tail = request.query.get("tail")
    if tail is None:
        return worker, None
    if not tail.isdigit() or int(tail) > MAX_TAIL:
        raise web.HTTPUnprocessableEntity(
            reason=f"tail must be a number of lines from 0 to {MAX_TAIL:,}"
        )
    return worker, int(tail)


@api_handler(user_authenticated=True)
async def get_cluster_logs(request: web.Request) -> web.Response:
    """The scheduler's and every worker's log (stopped ones too), for the owner and admins.

    A running cluster's logs are fetched from its launchers now; a stopped cluster's
    are the ones kept (``ElasticBackend.log_keep_for``), also after its record is gone.
    """
    worker, tail = _logs_query(request)
    views = _views(request)
    name = request.match_info["cluster_name"]
    user = request["user"]
    cluster = views.get_cluster(name)
    if cluster is not None:
        cluster = _owned_cluster(request)
        logs = await views.logs.read(cluster, worker, tail)
    else:
        owner = views.logs.store.owner(name)
        if owner is None or not (user.admin or user.name == owner):
            raise web.HTTPNotFound(reason=f"Cluster {name} not found")
        logs = views.logs.store.read(name, worker, tail)
    if worker is not None and worker not in logs:
        raise web.HTTPNotFound(reason=f"No log of {worker} is kept for cluster {name}")
    return web.json_response({"cluster": name, "logs": logs})


@api_handler(user_authenticated=True)
async def get_quota(request: web.Request) -> web.Response:
    quotas = _views(request).quotas
    vos = {
        vo.name: {
            "limits": vo.limits(),
            "usage": quotas.usage_of(vo).as_dict(),
            "accounting_group": vo.accounting_group,
        }
        for vo in quotas.visible_to(request["user"])
    }
    return web.json_response({"quotas_enabled": quotas.enabled, "vos": vos})


@api_handler(user_authenticated=True)
async def get_profiles(request: web.Request) -> web.Response:
    """The profiles the caller may choose, with their sizes, pools and environment."""
    views = _views(request)
    return web.json_response(
        {
            "profiles_enabled": views.profiles.enabled,
            "profiles": views.profiles.visible(request["user"]),
        }
    )


def _has_metrics_token(request: web.Request, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(presented.strip().encode(), token.encode())
    )


async def _metrics_response(request: web.Request) -> web.Response:
    body, content_type = render_metrics(_views(request))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _metrics_for_admins(request: web.Request) -> web.Response:
    if not request["user"].admin:
        raise web.HTTPForbidden(
            reason="Metrics are for admins, or for scrapers presenting "
            "ElasticBackend.metrics_api_token as a bearer token"
        )
    return await _metrics_response(request)


@api_handler
async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus scrape: the configured bearer token, or an admin of the authenticator."""
    if _has_metrics_token(request, _views(request).metrics_api_token):
        return await _metrics_response(request)
    auth = request.app["authenticator"]
    return await auth.authenticate_and_handle(request, _metrics_for_admins)


@web.middleware
async def quota_messages(request: web.Request, handler) -> web.StreamResponse:
    """Add what the VO grants to upstream's scale/adapt answers (the client shows it)."""
    response = await handler(request)
    route = request.match_info.route
    is_scale = route.handler is routes.scale_cluster
    if not (is_scale or route.handler is routes.adapt_cluster) or response.status != 200:
        return response
    views = _views(request)
    cluster = views.get_cluster(request.match_info["cluster_name"])
    if cluster is None:
        return response
    body = await request.json()
    wanted = body.get("count") if is_scale else body.get("maximum")
    if not isinstance(wanted, int):
        return response
    message = views.quotas.scale_message(cluster, wanted)
    if message is None:
        return response
    return web.json_response({"ok": False, "msg": message})


def _from_the_scheduler(request: web.Request, cluster: Cluster) -> bool:
    """Whether the request carries the cluster's API token (only its scheduler has it)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "token" and hmac.compare_digest(
        token.strip().encode(), cluster.token.encode()
    )


async def post_cluster_event(request: web.Request) -> web.Response:
    """A cluster's scheduler reports what it found (``scheduler_reports`` lists the kinds)."""
    views = _views(request)
    cluster = views.get_cluster(request.match_info["cluster_name"])
    if cluster is None:
        raise web.HTTPNotFound(reason="Cluster not found")
    if not _from_the_scheduler(request, cluster):
        raise web.HTTPForbidden(reason="Only the cluster's scheduler reports its events")
    try:
        report = parse_report(await request.json())
    except BadReport as exc:
        return web.json_response({"error": str(exc)}, status=422)
    views.scheduler_report(cluster.name, report)
    return web.json_response({"ok": True})


@api_handler(user_authenticated=True)
async def get_clusters(request: web.Request) -> web.Response:
    """The caller's own active clusters (admins too see only theirs: ``stop_clusters``
    stops what this lists), each with age, workers, cores and last client activity."""
    views = _views(request)
    now = timestamp()
    clusters = views.clusters_of(request["user"].name)
    return web.json_response({"clusters": [cluster_summary(c, now) for c in clusters]})


@web.middleware
async def scheduler_stops(request: web.Request, handler) -> web.StreamResponse:
    """Tell the owner why a cluster stopped when its own scheduler asked for it.

    dask-gateway's scheduler preload stops its cluster through this route with the
    cluster's API token when the cluster was idle for its ``idle_timeout``; ours
    (``scheduler_presence``) adds ``?reason=no_client`` (or ``no_client_detached``)
    when no client was connected for that long. Only one of these fixed reasons
    is taken from the scheduler, never its text.
    """
    if request.method == "DELETE" and request.match_info.route.handler is routes.delete_cluster:
        views = _views(request)
        cluster = views.get_cluster(request.match_info["cluster_name"])
        if cluster is not None and _from_the_scheduler(request, cluster):
            views.note_scheduler_stop(cluster.name, request.query.get("reason"))
    return await handler(request)


def add_routes(app: web.Application, views: GatewayViews) -> None:
    """Register the Elastic Gateway routes and request checks on the gateway's application."""
    app["elastic"] = views
    guard_user_names(app["authenticator"])
    app.router.add_get(PREFIX + "/clusters", get_clusters)
    app.router.add_get(PREFIX + "/clusters/{cluster_name}", get_cluster_details)
    app.router.add_get(PREFIX + "/clusters/{cluster_name}/logs", get_cluster_logs)
    app.router.add_get(PREFIX + "/quota", get_quota)
    app.router.add_get(PREFIX + "/profiles", get_profiles)
    app.router.add_post(PREFIX + "/clusters/{cluster_name}/events", post_cluster_event)
    app.router.add_get(PREFIX + "/metrics", get_metrics)
    app.middlewares.append(refuse_malformed_requests)
    app.middlewares.append(quota_messages)
    app.middlewares.append(scheduler_stops)
