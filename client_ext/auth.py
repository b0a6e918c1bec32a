"""Where the gateway is and how to authenticate to it, from a notebook.

Address and credentials come from the arguments, the environment, dask config,
or, on the machine running ``elastic-gateway serve``, the state directory's
``client.json`` (mode 0600). That file also holds a key the gateway draws at
every start; before the password is sent, the server at the recorded address
must prove it knows that key (HMAC of a fresh challenge), so whatever listens
on the port after the gateway stopped never sees the password.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dask.config
from dask_gateway.auth import BasicAuth, GatewayAuth, JupyterHubAuth
from dask_gateway.config import defaults as dask_gateway_defaults

from .api import API_PREFIX

CLIENT_FILE = "client.json"
HUB_SERVICE_NAME = "dask-gateway"
IDENTITY_PATH = f"{API_PREFIX}/identity"
_IDENTITY_CONTEXT = b"elastic-gateway identity v1\0"
_CHALLENGE = re.compile(r"[0-9a-f]{32,128}")


class GatewayIdentityError(RuntimeError):
    """The server at the local gateway's address did not prove it is that gateway."""


def default_state_directory() -> Path:
    """Where ``elastic-gateway serve`` keeps its state on this machine by default."""
    if os.environ.get("ELASTIC_GATEWAY_STATE_DIR"):
        return Path(os.environ["ELASTIC_GATEWAY_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "elastic-gateway"


def _embedded_client_file() -> dict[str, str] | None:
    """The local gateway's ``client.json`` if this user owns it and nobody else can write it."""
    try:
        fd = os.open(default_state_directory() / CLIENT_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        try:
            data = json.load(f)
        except ValueError:
            return None
    fields = ("address", "username", "password")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in fields):
        return None
    return data


def valid_challenge(challenge: str) -> bool:
    """Challenges are 32 to 128 lowercase hex digits; anything else is refused unread."""
    return isinstance(challenge, str) and _CHALLENGE.fullmatch(challenge) is not None


def identity_proof(key: str, challenge: str) -> str:
    """What only the gateway holding ``key`` can answer to ``challenge`` (HMAC-SHA256)."""
    message = _IDENTITY_CONTEXT + challenge.encode("ascii")
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def _origin(address: str) -> tuple[str, str, int]:
    parts = urlsplit(address)
    scheme = parts.scheme or "http"
    return scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80)


def verify_gateway_identity(address: str, key: str | None, timeout: float = 5.0) -> None:
    """Check that the server at ``address`` holds this start's identity ``key``.

    Raises ``GatewayIdentityError`` otherwise. Only the challenge travels; no
    proxy is used and redirects are not followed, so the answer comes from the
    very server the password would go to.
    """
    if not key:
        raise GatewayIdentityError(
            f"{CLIENT_FILE} of the local gateway holds no identity key (written by an older "
            "elastic-gateway); restart `elastic-gateway serve`"
        )
    scheme, host, port = _origin(address)
    prefix = urlsplit(address).path.rstrip("/")  # a gateway served under a path prefix
    challenge = secrets.token_hex(32)
    conn_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = conn_class(host, port, timeout=timeout)
    try:
        conn.request("GET", f"{prefix}{IDENTITY_PATH}?challenge={challenge}")
        resp = conn.getresponse()
        body = resp.read(4096) if resp.status == 200 else b""
    except (OSError, http.client.HTTPException) as err:
        reason = f"no answer ({err})"
    else:
        try:
            proof = json.loads(body).get("proof") if body else None
        except (ValueError, AttributeError):
            proof = None
        if isinstance(proof, str) and hmac.compare_digest(proof, identity_proof(key, challenge)):
            return
        reason = f"HTTP {resp.status} without a valid proof"
    finally:
        conn.close()
    source = default_state_directory() / CLIENT_FILE
    raise GatewayIdentityError(
        f"not sending the local gateway's password to {scheme}://{host}:{port}: {reason}, so "
        f"it is not the `elastic-gateway serve` that wrote {source}. Is that gateway still "
        "running? Start it again, or pass address= and auth= explicitly."
    )


class LocalGatewayAuth(BasicAuth):
    """Basic auth with the local gateway's password, sent only to that gateway.

    dask_gateway calls ``pre_request`` after a 401 and then sends the password;
    here the server that answered must first prove this start's identity key
    (one blocking request to it, at most 5 s: the hook is synchronous).
    """

    def __init__(
        self, username: str, password: str, address: str, identity_key: str | None
    ) -> None:
        super().__init__(username, password)
        self.address = address
        self._identity_key = identity_key

    def __repr__(self) -> str:
        return f"LocalGatewayAuth(username={self.username!r}, address={self.address!r})"

    def pre_request(self, resp: Any) -> tuple[dict[str, str], None]:
        if resp is not None and getattr(resp, "url", None) is not None:
            target = str(resp.url.origin())
            if _origin(target) != _origin(self.address):
                raise GatewayIdentityError(
                    f"not sending the local gateway's password to {target}: it is not the "
                    f"recorded address {self.address}"
                )
        # The same origin; the recorded address also has the path prefix the gateway
        # serves under (c.Proxy.prefix), where its identity route is.
        verify_gateway_identity(self.address, self._identity_key)
        return super().pre_request(resp)


def _dask_auth_is_default() -> bool:
    """True unless the user configured dask's ``gateway.auth`` beyond what dask_gateway ships.

    dask_gateway ships ``type: basic`` with no kwargs (and copies that file into
    ``~/.config/dask``), so a plain "basic" says nothing about what the user wants.
    """
    configured = dask.config.get("gateway.auth", None) or {}
    if not isinstance(configured, dict):
        return False
    shipped = dask_gateway_defaults["gateway"]["auth"]
    if configured.get("type") in (None, shipped.get("type")):
        return not (configured.get("kwargs") or {})
    return False


def hub_service_address() -> str | None:
    """The gateway's address through JupyterHub, in a single-user server that can tell.

    JupyterHub gives a single-user server ``$JUPYTERHUB_PUBLIC_HUB_URL`` (the hub's
    public URL, ``https://hub.example.org/prefix/hub/``) when the admin set
    ``c.JupyterHub.public_url``; the gateway is then its service
    ``<public URL>/services/<$ELASTIC_GATEWAY_SERVICE_NAME or dask-gateway>``.
    ``$JUPYTERHUB_API_URL`` is not used: it is the hub's own API server
    (``http://hub:8081/hub/api`` in Kubernetes), which does not serve ``/services/``.
    """
    if not os.environ.get("JUPYTERHUB_API_TOKEN"):
        return None
    hub_url = os.environ.get("JUPYTERHUB_PUBLIC_HUB_URL", "")
    parts = urlsplit(hub_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    base = parts.path.rstrip("/").removesuffix("/hub")
    name = os.environ.get("ELASTIC_GATEWAY_SERVICE_NAME") or HUB_SERVICE_NAME
    return f"{parts.scheme}://{parts.netloc}{base}/services/{name}"


def resolve_address_and_auth(
    address: str | None = None, auth: GatewayAuth | str | None = None
) -> tuple[str | None, GatewayAuth | str | None]:
    """Fill in the gateway address and auth the way a facility notebook expects.

    Address: the argument, ``$ELASTIC_GATEWAY_ADDRESS``, dask config
    ``gateway.address`` (``$DASK_GATEWAY__ADDRESS``, as daskhub sets it), the hub's
    service in a JupyterHub single-user server (``hub_service_address``), then the
    local embedded gateway. Auth: the argument,
    JupyterHub token auth when ``$JUPYTERHUB_API_TOKEN`` is set, dask config
    ``gateway.auth`` when the user set it (dask_gateway's shipped default does not
    count), then the local embedded gateway's credentials when the address is
    the one it recorded (sent only after it proves its identity).
    """
    embedded = None
    if address is None:
        address = os.environ.get("ELASTIC_GATEWAY_ADDRESS") or dask.config.get(
            "gateway.address", None
        )
    if address is None:
        address = hub_service_address()
    if address is None:
        embedded = _embedded_client_file()
        address = embedded and embedded.get("address")
    if auth is None:
        if os.environ.get("JUPYTERHUB_API_TOKEN"):
            auth = JupyterHubAuth()
        elif _dask_auth_is_default():
            embedded = embedded or _embedded_client_file()
            if embedded and address and embedded["address"] == address.rstrip("/"):
                auth = LocalGatewayAuth(
                    embedded["username"],
                    embedded["password"],
                    embedded["address"],
                    key if isinstance(key := embedded.get("identity_key"), str) else None,
                )
    return address, auth
