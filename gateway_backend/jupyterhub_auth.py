"""JupyterHub as the gateway's front door: users authenticate with their hub API token.

Upstream's ``JupyterHubAuthenticator`` asks the hub's ``/hub/api/user`` who a
token belongs to. This subclass keeps its user/service name handling and its
service access check, and changes what upstream gets wrong for a VO gateway:

- a reply without ``groups`` for a user is refused (403, saying which scope to
  grant) instead of becoming "no groups", which would refuse every cluster with
  a misleading "belongs to no VO", or silently count users against a fallback VO;
- a token the hub rejects (revoked, expired: the hub answers 403) is a 401 for
  the client, not upstream's 500 "Permission failure";
- a token without access to the gateway's service gets a 403 naming the scope.

Groups from the hub are untrusted strings; they are only compared with the VO
groups of the admin's config (``ElasticBackend.vos``). With
``stop_clusters_with_server``, the server a token belongs to (``hub_servers``)
travels with the user to the new cluster's record; the cache of who a token is
keeps one entry per token, not upstream's one per user name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import ContentTypeError, web
from dask_gateway_server.auth import JupyterHubAuthenticator, UserCache, unauthorized
from dask_gateway_server.models import User
from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate

from .hub_servers import server_of_token
from .usertext import one_line, quoted

# Name of the gateway's JupyterHub service when neither config nor environment says.
DEFAULT_SERVICE_NAME = "dask-gateway"


def _refused(
    status: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An HTTP error whose reason and JSON body carry ``message``: proxies replace the
    reason phrase, the body reaches the client (``client_ext`` shows its ``error``)."""
    message = one_line(message)
    return status(
        reason=message,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


class HubUser(User):
    """A hub user as one token shows them: the server it belongs to, if any, and the
    token's digest as the cache key (never the token itself)."""

    def __init__(
        self, name: str, groups=(), admin: bool = False, server: dict[str, str] | None = None
    ) -> None:
        super().__init__(name, groups=groups, admin=admin)
        self.jupyterhub_server = server
        self.cache_key = name


class TokenUserCache(UserCache):
    """Upstream keeps one cookie per user name: every client of a user would go on as the
    first token seen (its server, its access). Here each token gets its own cookie, and
    expired entries are dropped as new ones come (tokens change with every server)."""

    def get(self, cookie: str) -> User | None:
        entry = self.cookie_to_user.get(cookie)
        if entry is None:
            return None
        at, user = entry
        if at + self.max_age < time.monotonic():
            self._forget(cookie, user)
            return None
        return user

    def put(self, user: User) -> str:
        now = time.monotonic()
        for cookie, (at, old) in list(self.cookie_to_user.items()):
            if at + self.max_age < now:
                self._forget(cookie, old)
        key = getattr(user, "cache_key", user.name)
        cookie = self.name_to_cookie.get(key)
        if cookie is None:
            cookie = uuid.uuid4().hex
            self.name_to_cookie[key] = cookie
            self.cookie_to_user[cookie] = (now, user)
        return cookie

    def _forget(self, cookie: str, user: User) -> None:
        self.cookie_to_user.pop(cookie, None)
        self.name_to_cookie.pop(getattr(user, "cache_key", user.name), None)


class ElasticJupyterHubAuthenticator(JupyterHubAuthenticator):
    """Authenticate with JupyterHub API tokens; the hub's groups select the user's VO.

    Configure as ``c.DaskGateway.authenticator_class =
    "gateway_backend.jupyterhub_auth.ElasticJupyterHubAuthenticator"``.
    """

    jupyterhub_service_name = Unicode(
        help="""
        The gateway's name as a JupyterHub service (``c.JupyterHub.services``). Only
        tokens with ``access:services!service=<name>`` (or ``access:services``) get in,
        so the hub's roles decide who may use the gateway. Default:
        ``$JUPYTERHUB_SERVICE_NAME``, else ``dask-gateway`` (upstream's default is
        empty, letting any hub token in; set ``use_service_access_scopes = False`` for
        that).
        """,
        config=True,
    )

    @default("jupyterhub_service_name")
    def _default_jupyterhub_service_name(self) -> str:
        # Upstream defaults to "" (every hub token may use the gateway); a named service
        # lets the hub's roles decide who may, as daskhub's "dask-gateway" service does.
        return os.environ.get("JUPYTERHUB_SERVICE_NAME") or DEFAULT_SERVICE_NAME

    max_groups = Integer(
        1000,
        help="""
        Most groups a user may have in the hub's reply. A longer list is refused
        (403) rather than compared with every VO; raise it for sites whose users
        really are in more groups.
        """,
        config=True,
    )

    hub_request_timeout = Float(
        10.0,
        help="""
        Seconds the gateway waits for JupyterHub to say who a token belongs to. A
        hub that does not answer in time, or cannot be reached, gets the request a
        502 that says so, instead of holding it.
        """,
        config=True,
    )

    stop_clusters_with_server = Bool(
        False,
        help="""
        Stop a cluster when the JupyterHub single-user server that created it stops
        (stopped, culled, or started again). Only clusters created with a server's own
        token ($JUPYTERHUB_API_TOKEN in the notebook) are tied to it, and not those created
        with ``shutdown_on_close=False``. The gateway's service token needs the hub scopes
        ``list:users`` and ``read:servers`` (docs/jupyterhub.md); without them, or while
        the hub does not answer, no cluster is stopped.
        """,
        config=True,
    )

    server_check_period = Float(
        30.0,
        help="""
        Seconds between two checks of which single-user servers run, for
        ``stop_clusters_with_server``: one listing of the hub's active users per check,
        only while some cluster is tied to a server.
        """,
        config=True,
    )

    @validate("server_check_period")
    def _check_server_check_period(self, proposal: dict) -> float:
        if not proposal["value"] > 0:
            raise TraitError(
                "ElasticJupyterHubAuthenticator.server_check_period: must be a number of "
                f"seconds above 0, got {proposal['value']!r}"
            )
        return proposal["value"]

    @default("cache")
    def _default_cache(self) -> UserCache:
        return TokenUserCache(max_age=self.cache_max_age)

    _warned_missing_groups = False

    async def authenticate(self, request: web.Request) -> User:
        """The hub's user for the request's ``Authorization: jupyterhub <token>``."""
        token = self.get_token(request)
        if token is None:
            raise unauthorized("jupyterhub")
        url = f"{self.jupyterhub_api_url.rstrip('/')}/user"
        try:
            return await self._ask_hub(url, token)
        except (TimeoutError, aiohttp.ClientError) as err:
            self.log.error("JupyterHub at %s did not answer a token check: %r", url, err)
            raise _refused(
                web.HTTPBadGateway,
                "JupyterHub did not answer when asked who this token belongs to; try again "
                "later or tell the administrators",
            ) from None

    async def _ask_hub(self, url: str, token: str) -> User:
        headers = {"Authorization": f"token {token}"}
        timeout = aiohttp.ClientTimeout(total=self.hub_request_timeout)
        async with self.session.get(
            url, headers=headers, ssl=self.ssl_context, timeout=timeout
        ) as resp:
            if resp.status in (401, 403, 404):
                # /hub/api/user answers 403 to a token it does not know (revoked,
                # expired) and 404 when its user was deleted: the caller must log in again.
                self.log.debug("JupyterHub did not accept a token (HTTP %d)", resp.status)
                raise _refused(
                    web.HTTPUnauthorized,
                    "JupyterHub does not accept this token (revoked or expired?); use the "
                    "token of your running server, or make a new one in the hub's token page",
                    headers={"WWW-Authenticate": "jupyterhub"},
                )
            if resp.status >= 400:
                self.log.error(
                    "JupyterHub at %s answered HTTP %d to a token check", url, resp.status
                )
                raise _refused(
                    web.HTTPBadGateway,
                    f"JupyterHub answered HTTP {resp.status} when asked who this token "
                    "belongs to; try again later or tell the administrators",
                )
            try:
                model = await resp.json()
            except (ContentTypeError, ValueError):
                model = None
        user = self.user_from_model(model)
        user.cache_key = hashlib.sha256(token.encode()).hexdigest()
        return user

    def user_from_model(self, model: Any) -> HubUser:
        """The gateway user for the hub's ``/hub/api/user`` reply (the token's owner)."""
        if not (
            isinstance(model, dict)
            and isinstance(model.get("name"), str)
            and isinstance(model.get("kind"), str)
        ):
            self.log.error("JupyterHub's /user reply has no name and kind: %s", quoted(model))
            raise _refused(
                web.HTTPBadGateway,
                "JupyterHub's answer about this token has no user name; tell the administrators",
            )
        name, kind = model["name"], model["kind"]
        # As upstream: services and user names with ':' become "<kind>:<name>", so a
        # service never passes for a user of the same name.
        username = name if kind == "user" and ":" not in name else f"{kind}:{name}"
        self._check_service_access(username, model.get("scopes"))
        return HubUser(
            username,
            groups=self._groups_of(username, kind, model),
            admin=model.get("admin") is True,
            server=server_of_token(model) if self.stop_clusters_with_server else None,
        )

    def _check_service_access(self, username: str, scopes: Any) -> None:
        if not self.use_service_access_scopes:
            return
        service = self.jupyterhub_service_name
        wanted = {"access:services", f"access:services!service={service}"}
        if isinstance(scopes, list) and wanted.intersection(scopes):
            return
        raise _refused(
            web.HTTPForbidden,
            f"this JupyterHub token of {username} may not use the {service} service: "
            f"its scopes lack access:services!service={service}. Ask the hub administrators "
            f"to grant that scope to your role (and to the single-user server's token via "
            "c.Spawner.server_token_scopes), or make a token that has it",
        )

    def _groups_of(self, username: str, kind: str, model: dict) -> list[str]:
        if kind != "user":
            return []  # services and other kinds have no groups in JupyterHub
        if "groups" not in model:
            if not self._warned_missing_groups:
                self._warned_missing_groups = True
                self.log.error(
                    "JupyterHub's /hub/api/user reply for user tokens has no 'groups': VOs "
                    "cannot be found. Grant the users' tokens read:users:groups!user "
                    "(JupyterHub >= 2 includes it for the token's owner) or upgrade the hub"
                )
            raise _refused(
                web.HTTPForbidden,
                f"JupyterHub did not send the groups of user {username}, so this gateway "
                "cannot tell which VO you belong to. The token needs the scope "
                "read:users:groups!user; ask the hub administrators to grant it",
            )
        groups = model["groups"]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            self.log.error("JupyterHub sent groups that are not names: %s", quoted(groups))
            raise _refused(
                web.HTTPBadGateway,
                "JupyterHub sent this user's groups in an unknown form; tell the administrators",
            )
        if len(groups) > self.max_groups:
            raise _refused(
                web.HTTPForbidden,
                f"user {username} is in {len(groups)} JupyterHub groups, more than this "
                f"gateway accepts (ElasticJupyterHubAuthenticator.max_groups = {self.max_groups})",
            )
        return groups
