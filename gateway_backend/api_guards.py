"""Requests refused before any route sees them, ours or upstream's.

Upstream's routes quote what they are sent into HTTP reasons (a newline there
is a 500), split and decode the Authorization header unchecked, and expect a
JSON object body. Everything that would reach them malformed is answered here
with a 4xx that says what is wrong; users whose names no language can carry
are refused whatever the authenticator.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from aiohttp import web
from dask_gateway_server import routes

from .usertext import quoted

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
