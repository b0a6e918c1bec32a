"""How ``client_ext`` picks auth, and when it sends the local gateway's password."""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dask.config
import pytest
from aiohttp import ClientSession, web
from dask_gateway.auth import JupyterHubAuth, get_auth
from dask_gateway.config import defaults as dask_gateway_defaults
from yarl import URL

from client_ext.auth import (
    CLIENT_FILE,
    IDENTITY_PATH,
    GatewayIdentityError,
    LocalGatewayAuth,
    resolve_address_and_auth,
)
from gateway_backend.embedded import free_port
from gateway_backend.identity import add_identity_route, new_identity_key

ADDRESS = "http://127.0.0.1:8765"


@pytest.fixture
def local_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A local gateway's client.json, under dask_gateway's shipped default config."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    data = {
        "address": ADDRESS,
        "username": "analyst",
        "password": "the-local-password",
        "identity_key": new_identity_key(),
    }
    fd = os.open(state_dir / CLIENT_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    monkeypatch.setenv("ELASTIC_GATEWAY_STATE_DIR", str(state_dir))
    for name in ("ELASTIC_GATEWAY_ADDRESS", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    shipped = copy.deepcopy(dask_gateway_defaults["gateway"]["auth"])
    with dask.config.set({"gateway.address": None, "gateway.auth": shipped}):
        yield data


def test_dask_gateway_default_config_uses_the_local_gateways_credentials(local_gateway):
    assert dask.config.get("gateway.auth.type") == "basic"  # what dask_gateway ships
    address, auth = resolve_address_and_auth()
    assert address == ADDRESS
    assert isinstance(auth, LocalGatewayAuth)
    assert (auth.username, auth.password) == ("analyst", "the-local-password")


def test_basic_credentials_the_user_configured_in_dask_config_win(local_gateway):
    with dask.config.set({"gateway.auth.kwargs": {"username": "alice", "password": "hers"}}):
        address, auth = resolve_address_and_auth()
    assert address == ADDRESS
    assert auth is None  # so dask_gateway builds it from the user's config
    with dask.config.set({"gateway.auth.kwargs": {"username": "alice", "password": "hers"}}):
        assert get_auth(auth).username == "alice"


def test_another_auth_type_the_user_configured_in_dask_config_wins(local_gateway):
    with dask.config.set({"gateway.auth.type": "kerberos"}):
        assert resolve_address_and_auth()[1] is None


def test_a_jupyterhub_token_selects_jupyterhub_auth(local_gateway, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token")
    assert isinstance(resolve_address_and_auth()[1], JupyterHubAuth)


def test_another_address_never_gets_the_local_credentials(local_gateway):
    address, auth = resolve_address_and_auth("http://gateway.example.org:8000")
    assert address == "http://gateway.example.org:8000"
    assert auth is None


def test_a_client_file_others_can_write_is_ignored(local_gateway):
    path = Path(os.environ["ELASTIC_GATEWAY_STATE_DIR"]) / CLIENT_FILE
    path.chmod(0o622)
    assert resolve_address_and_auth() == (None, None)


@pytest.fixture
async def identity_server() -> AsyncIterator[tuple[str, str]]:
    """The real identity route on a real aiohttp server; yields (address, key)."""
    key = new_identity_key()
    app = web.Application()
    add_identity_route(app, key)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        await runner.cleanup()


async def test_the_password_goes_to_a_server_that_proves_this_starts_key(identity_server):
    address, key = identity_server
    auth = LocalGatewayAuth("analyst", "pw", address, key)
    headers, _ = await asyncio.to_thread(auth.pre_request, None)
    assert headers["Authorization"].startswith("Basic ")


async def test_a_server_holding_another_key_never_gets_the_password(identity_server):
    address, _ = identity_server
    auth = LocalGatewayAuth("analyst", "pw", address, new_identity_key())
    with pytest.raises(GatewayIdentityError, match="without a valid proof"):
        await asyncio.to_thread(auth.pre_request, None)


def test_no_server_at_the_recorded_address_never_gets_the_password():
    address = f"http://127.0.0.1:{free_port()}"
    auth = LocalGatewayAuth("analyst", "pw", address, new_identity_key())
    with pytest.raises(GatewayIdentityError, match="no answer"):
        auth.pre_request(None)


def test_a_client_file_without_identity_key_never_sends_the_password():
    auth = LocalGatewayAuth("analyst", "pw", ADDRESS, None)
    with pytest.raises(GatewayIdentityError, match="restart `elastic-gateway serve`"):
        auth.pre_request(None)


def test_a_401_from_another_origin_never_gets_the_password():
    class Answer401:
        url = URL("http://127.0.0.1:9999/api/v1/clusters/")

    auth = LocalGatewayAuth("analyst", "pw", ADDRESS, new_identity_key())
    with pytest.raises(GatewayIdentityError, match="not the recorded address"):
        auth.pre_request(Answer401())


@pytest.mark.parametrize("challenge", ["", "ab", "G" * 32, "A" * 32, "a" * 129, "../" * 16])
async def test_the_identity_route_refuses_malformed_challenges(identity_server, challenge):
    address, _ = identity_server
    async with ClientSession() as session:
        resp = await session.get(address + IDENTITY_PATH, params={"challenge": challenge})
        assert resp.status == 400
        assert "proof" not in await resp.json()
