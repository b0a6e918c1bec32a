"""Elastic Gateway's additions to the gateway HTTP API (under ``/api/elastic/v1``).

Authenticated by the gateway's own authenticator; a user sees only their own
clusters (admins see all), exactly like upstream's cluster routes. The metrics
are for admins and for a Prometheus scraper holding the configured bearer token.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web
from dask_gateway_server import routes
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.routes import api_handler

from .metrics import render_metrics
from .usertext import quoted

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


def _has_metrics_token(request: web.Request, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(presented.strip().encode(), token.encode())
    )


async def _metrics_response(request: web.Request) -> web.Response:
    body, content_type = render_metrics(request.app["backend"])
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
    if _has_metrics_token(request, request.app["backend"].metrics_api_token):
        return await _metrics_response(request)
    auth = request.app["authenticator"]
    return await auth.authenticate_and_handle(request, _metrics_for_admins)


CLUSTER_NAME = re.compile(r"[0-9a-f]{32}")


@web.middleware
async def refuse_malformed_requests(request: web.Request, handler) -> web.StreamResponse:
    """4xx for what no route can handle, before any route (ours or upstream's) sees it.

    Cluster names are uuid4 hex (upstream's DB layer): anything else is unknown,
    and answering early keeps newlines and megabytes out of reasons and logs.
    Upstream's routes expect a JSON object body and answer 500 to anything else.
    """
    problem = _authorization_problem(request.headers.get("Authorization"))
    if problem:
        return web.json_response({"error": problem}, status=401)
    name = request.match_info.get("cluster_name")
    if name is not None and not CLUSTER_NAME.fullmatch(name):
        return web.json_response({"error": "Cluster not found"}, status=404)
    if request.method == "POST":  # every POST route reads a JSON object
        raw = await request.read()  # cached: the route reads the same bytes
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response(
                {"error": "The request body must be a JSON object"}, status=422
            )
        problem = _scaling_problem(request.match_info.route.handler, body)
        if problem:
            return web.json_response({"error": problem}, status=422)
    return await handler(request)


MAX_WORKER_COUNT = 1_000_000


def _authorization_problem(header: str | None) -> str | None:
    """Upstream's authenticators split and decode this header unchecked (a 500 if odd)."""
    if header is None:
        return None
    scheme, space, credentials = header.partition(" ")
    if not space or not scheme or not credentials.strip():
        return "The Authorization header must be '<scheme> <credentials>'"
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return "Basic credentials must be base64 of ASCII 'user:password'"
        if ":" not in decoded:
            return "Basic credentials must be base64 of ASCII 'user:password'"
    return None


def _count_problem(key: str, value: Any, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKER_COUNT:
        noun = "an integer" if not optional else "null or an integer"
        return f"{key} must be {noun} from 0 to {MAX_WORKER_COUNT:,}, got {quoted(value)}"
    return None


def _scaling_problem(route_handler, body: dict) -> str | None:
    """Check scale/adapt bodies whole: upstream quotes bad values raw (a 500 on a newline)."""
    if route_handler is routes.scale_cluster:
        return _count_problem("count", body.get("count"), optional=False)
    if route_handler is routes.adapt_cluster:
        for key in ("minimum", "maximum"):
            problem = _count_problem(key, body.get(key), optional=True)
            if problem:
                return problem
        if not isinstance(body.get("active", True), bool):
            return f"active must be true or false, got {quoted(body.get('active'))}"
        low, high = body.get("minimum"), body.get("maximum")
        if low is not None and high is not None and low > high:
            return f"minimum ({low}) must not be larger than maximum ({high})"
    return None


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


MAX_USER_NAME = 256


def user_name_problem(name: Any) -> str | None:
    """Why a name from the authenticator cannot be used, or None.

    Names reach logs, HTTP reasons, database rows, job ads and file paths;
    launchers escape or refuse them for their language, and this gateway-wide
    rule keeps out what no language can carry: control characters (a newline
    forges log lines and breaks HTTP reasons), invalid Unicode, and megabytes.
    """
    if not isinstance(name, str) or not name:
        return "the authenticator returned an empty user name"
    if len(name) > MAX_USER_NAME:
        return f"user names are limited to {MAX_USER_NAME} characters"
    if not name.isprintable():
        return f"user name {quoted(name)} contains control or invalid characters"
    return None


def guard_user_names(authenticator) -> None:
    """Refuse (403) users whose names fail ``user_name_problem``, for any authenticator."""
    authenticate = authenticator.authenticate

    async def authenticate_checked(request: web.Request):
        result = await authenticate(request)
        user = result[0] if isinstance(result, tuple) else result
        problem = user_name_problem(user.name)
        if problem:
            request.app["log"].warning("Refused a request: %s", problem)
            raise web.HTTPForbidden(reason=f"{problem}; ask the administrators for another name")
        return result

    authenticator.authenticate = authenticate_checked


def add_routes(app: web.Application, backend: ElasticBackend) -> None:
    """Register the Elastic Gateway routes on the gateway's aiohttp application."""
    guard_user_names(app["authenticator"])
    app.router.add_get(PREFIX + "/clusters/{cluster_name}", get_cluster_details)
    app.router.add_get(PREFIX + "/quota", get_quota)
    app.router.add_get(PREFIX + "/metrics", get_metrics)
    app.middlewares.append(refuse_malformed_requests)
    app.middlewares.append(quota_messages)
