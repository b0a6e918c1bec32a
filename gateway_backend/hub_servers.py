"""Clusters that stop with the JupyterHub server that created them (opt-in).

With ``ElasticJupyterHubAuthenticator.stop_clusters_with_server``, a cluster created
with a single-user server's token remembers that server. The hub names it, not the
client: a server's token carries ``access:servers!server=<user>/<server>`` among the
scopes ``/hub/api/user`` lists (``c.Spawner.server_token_scopes`` resolves
``access:servers!server`` to the token's own server). Every ``server_check_period``
the gateway asks the hub once, with its own service token, which users have active
servers (``GET /hub/api/users?state=active``, page by page) and stops each tied
cluster whose server is gone or was started again since (a new server, not the one
that made it). A hub that does not answer, or answers without what it takes, stops
nothing: clusters never stop because the hub is down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from dask_gateway_server.backends.db_base import Cluster, JobStatus

from .usertext import quoted

# Where a cluster's config keeps the server that created it ({"user": ..., "server": ...}).
TIE_KEY = "jupyterhub_server"
SERVER_SCOPE = "access:servers!server="
# Scopes the gateway's own token needs: unfiltered, or the listing could miss users.
NEEDED_SCOPES = ("list:users", "read:servers")
PAGE_SIZE = 200  # JupyterHub's default api_page_max_limit
MAX_PAGES = 1000


class HubAnswerError(Exception):
    """The hub did not answer, or not with what the check needs: stop nothing."""


def server_of_token(model: Mapping[str, Any]) -> dict[str, str] | None:
    """The single-user server a token belongs to, from the hub's ``/hub/api/user`` reply.

    Only a user's token with exactly one server of that same user in its
    ``access:servers!server=`` scopes counts; anything else (a personal token, a
    service, a token for several servers) ties the cluster to no server.
    """
    name, scopes = model.get("name"), model.get("scopes")
    if model.get("kind") != "user" or not isinstance(name, str) or not isinstance(scopes, list):
        return None
    servers = {
        scope[len(SERVER_SCOPE) :].partition("/")
        for scope in scopes
        if isinstance(scope, str) and scope.startswith(SERVER_SCOPE)
    }
    if len(servers) != 1:
        return None
    [(user, slash, server)] = servers
    if user != name or not slash or "/" in server:
        return None
    return {"user": user, "server": server}


def server_text(tie: Mapping[str, str]) -> str:
    """``your JupyterHub server`` or ``your JupyterHub server 'gpu'`` (a hostile name quoted)."""
    name = tie.get("server", "")
    return "your JupyterHub server" + (f" {quoted(name, 80)}" if name else "")


def active_servers(users: Iterable[Any]) -> dict[str, dict[str, str]]:
    """User -> server name -> its ``started`` time, from ``/hub/api/users?state=active``.

    A user without ``servers`` means the gateway's token lacks ``read:servers``: that is
    no answer (absent servers would look stopped), so it raises.
    """
    active: dict[str, dict[str, str]] = {}
    for user in users:
        if not isinstance(user, dict) or not isinstance(user.get("name"), str):
            raise HubAnswerError(f"a user in the hub's list has no name: {quoted(user)}")
        servers = user.get("servers")
        if not isinstance(servers, dict):
            raise HubAnswerError(
                "the hub's user list has no servers: grant the gateway's service read:servers"
            )
        active[user["name"]] = {
            str(name): str((server or {}).get("started") or "")
            for name, server in servers.items()
            if isinstance(server, dict) and not server.get("stopped")
        }
    return active


class ServerStops:
    """Which tied clusters to stop, given what the hub says runs.

    Remembers when each cluster's server was started at its first sight, so a server
    stopped and started again between two checks still counts as stopped.
    """

    def __init__(self) -> None:
        self.started_seen: dict[str, str] = {}

    def decide(
        self, clusters: Iterable[Cluster], active: Mapping[str, Mapping[str, str]], asked_ms: int
    ) -> list[tuple[Cluster, str]]:
        """Each cluster to stop with the reason its owner reads.

        ``asked_ms``: when the hub was asked; clusters created since may come from a
        server the answer does not know yet, so they wait for the next check.
        """
        stops, tied = [], set()
        for cluster in clusters:
            tie = cluster.config.get(TIE_KEY)
            if not tie or cluster.target > JobStatus.RUNNING or cluster.start_time >= asked_ms:
                continue
            if (cluster.state.get("clients") or {}).get("detached"):
                continue  # shutdown_on_close=False: the analyst means to outlive the notebook
            tied.add(cluster.name)
            started = active.get(tie["user"], {}).get(tie["server"])
            seen = self.started_seen.setdefault(cluster.name, started or "")
            if started is None:
                stops.append((cluster, f"cluster stopped: {server_text(tie)} stopped"))
            elif seen and started != seen:
                stops.append((cluster, f"cluster stopped: {server_text(tie)} was restarted"))
        for name in set(self.started_seen) - tied:
            del self.started_seen[name]
        return stops


class HubServerWatch:
    """The periodic check: one listing of the hub per period, only while clusters are tied."""

    def __init__(
        self,
        hub: Any,  # the ElasticJupyterHubAuthenticator: its session, URL, token and timeout
        clusters: Callable[[], Iterable[Cluster]],
        stop: Callable[[Cluster, str], Awaitable[None]],
        log: logging.Logger,
        clock: Callable[[], int],
    ) -> None:
        self.hub, self.clusters, self.stop, self.log, self.clock = hub, clusters, stop, log, clock
        self.stops = ServerStops()
        self._trouble = False  # a problem was logged: log it once, and its end

    async def check(self) -> None:
        """Stop the tied clusters whose server is gone; on any doubt, stop none."""
        tied = [c for c in self.clusters() if c.config.get(TIE_KEY)]
        if not tied:
            return
        asked_ms = self.clock()
        try:
            active = active_servers(await self._active_users())
        except HubAnswerError as exc:
            if not self._trouble:
                self._trouble = True
                self.log.warning(
                    "Not stopping clusters with their JupyterHub servers for now: %s", exc
                )
            return
        if self._trouble:
            self._trouble = False
            self.log.info("JupyterHub answers again: clusters stop with their servers again")
        for cluster, reason in self.stops.decide(tied, active, asked_ms):
            await self.stop(cluster, reason)

    async def _active_users(self) -> list[Any]:
        await self._check_own_scopes()
        users: list[Any] = []
        offset = 0
        for _ in range(MAX_PAGES):
            page = await self._get("users", state="active", offset=offset, limit=PAGE_SIZE)
            if not (isinstance(page, dict) and isinstance(page.get("items"), list)):
                raise HubAnswerError("the hub's user list is not a page of users")
            users += page["items"]
            following = (page.get("_pagination") or {}).get("next")
            if not following:
                return users
            offset = following.get("offset") if isinstance(following, dict) else None
            if not isinstance(offset, int):
                raise HubAnswerError("the hub's user list names no next page")
        raise HubAnswerError(f"the hub's user list has more than {MAX_PAGES} pages")

    async def _check_own_scopes(self) -> None:
        """Refuse a token that could list only some users: the rest would look stopped."""
        model = await self._get("user")
        scopes = model.get("scopes") if isinstance(model, dict) else None
        missing = [s for s in NEEDED_SCOPES if not isinstance(scopes, list) or s not in scopes]
        if missing:
            raise HubAnswerError(
                f"the gateway's JupyterHub token lacks the scope(s) {', '.join(missing)} "
                "(for all users): grant them to the gateway's service in the hub's load_roles"
            )

    async def _get(self, path: str, **params: Any) -> Any:
        import aiohttp  # with the server extra only, as the authenticator

        hub = self.hub
        url = f"{hub.jupyterhub_api_url.rstrip('/')}/{path}"
        headers = {
            "Authorization": f"token {hub.jupyterhub_api_token}",
            "Accept": "application/jupyterhub-pagination+json",
        }
        timeout = aiohttp.ClientTimeout(total=hub.hub_request_timeout)
        try:
            async with hub.session.get(
                url, params=params, headers=headers, ssl=hub.ssl_context, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    raise HubAnswerError(f"JupyterHub answered HTTP {resp.status} to GET {url}")
                return await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            # str(), never repr(): a response error's repr holds the request's headers.
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise HubAnswerError(f"JupyterHub at {url} did not answer ({why})") from None


def watch_hub_servers(backend: Any) -> None:
    """Start the periodic check when the gateway's authenticator asks for it."""
    from dask_gateway_server.utils import timestamp

    from .periodic import run_periodically

    hub = getattr(backend.parent, "authenticator", None)
    if not getattr(hub, "stop_clusters_with_server", False):
        return

    async def stop(cluster: Cluster, reason: str) -> None:
        if cluster.target == JobStatus.RUNNING:
            backend._note_stop_reason(cluster, reason)
            await backend.stop_cluster(cluster.name)

    watch = HubServerWatch(hub, backend.db.active_clusters, stop, backend.log, timestamp)
    period, why = hub.server_check_period, "Checking which JupyterHub servers run"
    run_periodically(backend._loops, watch.check, period, backend.log, why)
