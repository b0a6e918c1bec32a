"""Who a JupyterHub token's owner is to the gateway, from the hub's ``/hub/api/user`` reply.

The replies are shaped as JupyterHub 6 sends them (tests/e2e/test_jupyterhub.py talks to a
real hub); here each case is one reply, including those a real JupyterHub 6 never sends
(no ``groups``), which older or other hubs may.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway_backend.embedded import free_port
from gateway_backend.jupyterhub_auth import ElasticJupyterHubAuthenticator
from gateway_backend.quotas import group_list

ACCESS = "access:services!service=dask-gateway"


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch) -> ElasticJupyterHubAuthenticator:
    monkeypatch.delenv("JUPYTERHUB_SERVICE_NAME", raising=False)
    return ElasticJupyterHubAuthenticator(log=logging.getLogger("test-jupyterhub-auth"))


def reply(**fields) -> dict:
    model = {"kind": "user", "name": "alice", "admin": False, "groups": ["cms"]}
    model["scopes"] = [ACCESS, "read:users:groups!user=alice"]
    model.update(fields)
    return {k: v for k, v in model.items() if v is not None}


def error_of(excinfo: pytest.ExceptionInfo) -> str:
    return json.loads(excinfo.value.text)["error"]


def test_a_users_groups_come_from_the_hub(auth):
    user = auth.user_from_model(reply(groups=["cms", "dune"]))
    assert (user.name, user.groups, user.admin) == ("alice", {"cms", "dune"}, False)


def test_a_reply_without_groups_is_refused_naming_the_scope_to_grant(auth):
    with pytest.raises(web.HTTPForbidden) as excinfo:
        auth.user_from_model(reply(groups=None))
    assert "JupyterHub did not send the groups of user alice" in error_of(excinfo)
    assert "read:users:groups!user" in excinfo.value.reason


def test_missing_groups_are_logged_for_admins_once(auth, caplog):
    for _ in range(3):
        with pytest.raises(web.HTTPForbidden):
            auth.user_from_model(reply(groups=None))
    logged = [r for r in caplog.records if "has no 'groups'" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR


def test_a_service_has_no_groups_and_a_prefixed_name(auth):
    user = auth.user_from_model({"kind": "service", "name": "alice", "scopes": [ACCESS]})
    assert (user.name, user.groups) == ("service:alice", set())


def test_a_user_name_with_a_colon_is_prefixed_so_it_cannot_pass_for_a_service(auth):
    assert auth.user_from_model(reply(name="service:x")).name == "user:service:x"


def test_admin_only_when_the_hub_says_true(auth):
    assert auth.user_from_model(reply(admin=True)).admin is True
    assert auth.user_from_model(reply(admin="yes")).admin is False


def test_a_token_without_access_to_the_service_is_refused_naming_the_scope(auth):
    with pytest.raises(web.HTTPForbidden) as excinfo:
        auth.user_from_model(reply(scopes=["read:users:groups!user=alice"]))
    assert f"lack {ACCESS}" in error_of(excinfo)


def test_access_to_all_services_is_enough(auth):
    assert auth.user_from_model(reply(scopes=["access:services"])).name == "alice"


def test_the_service_name_defaults_to_dask_gateway(auth):
    assert auth.jupyterhub_service_name == "dask-gateway"
    assert auth.use_service_access_scopes is True


def test_the_service_name_follows_the_hubs_environment(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "gateway-b")
    assert ElasticJupyterHubAuthenticator().jupyterhub_service_name == "gateway-b"


@pytest.mark.parametrize("groups", ["cms", [1, 2], {"cms": True}])
def test_groups_that_are_not_a_list_of_names_are_a_bad_gateway(auth, groups):
    with pytest.raises(web.HTTPBadGateway):
        auth.user_from_model(reply(groups=groups))


def test_more_groups_than_max_groups_are_refused_naming_the_setting(auth):
    auth.max_groups = 2
    with pytest.raises(web.HTTPForbidden) as excinfo:
        auth.user_from_model(reply(groups=["a", "b", "c"]))
    assert "ElasticJupyterHubAuthenticator.max_groups = 2" in error_of(excinfo)


@pytest.mark.parametrize("model", [None, [], {"kind": "user"}, {"name": 3, "kind": "user"}])
def test_a_reply_without_name_and_kind_is_a_bad_gateway(auth, model):
    with pytest.raises(web.HTTPBadGateway):
        auth.user_from_model(model)


def test_refusals_quoting_a_hostile_name_stay_one_line(auth):
    with pytest.raises(web.HTTPForbidden) as excinfo:
        auth.user_from_model(reply(name="eve\r\nX-Injected: 1", groups=None))
    assert "\n" not in excinfo.value.reason and "\r" not in excinfo.value.reason


def test_hostile_group_names_are_quoted_in_messages():
    shown = group_list(["ok", "evil\nline", "x" * 500])
    assert "\n" not in shown and len(shown) < 200
    assert shown.startswith("'evil\\nline'") and "ok" in shown


def test_a_long_group_list_is_cut_in_messages():
    assert group_list([f"g{i:03}" for i in range(50)]).endswith("and 30 more")


class TokenRequest:
    """What authenticate() reads of a request: its headers."""

    headers = {"Authorization": "jupyterhub some-token"}


@pytest.fixture
async def hub_auth(auth) -> AsyncIterator[ElasticJupyterHubAuthenticator]:
    await auth.setup(None)
    try:
        yield auth
    finally:
        await auth.cleanup()


async def test_an_unreachable_hub_is_a_bad_gateway_that_says_so(hub_auth):
    hub_auth.jupyterhub_api_url = f"http://127.0.0.1:{free_port()}/hub/api"  # nothing there
    with pytest.raises(web.HTTPBadGateway) as excinfo:
        await hub_auth.authenticate(TokenRequest())
    assert "JupyterHub did not answer" in error_of(excinfo)


async def test_a_hub_that_does_not_answer_in_time_is_a_bad_gateway(hub_auth):
    release = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get("/hub/api/user", never)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        hub_auth.jupyterhub_api_url = f"http://127.0.0.1:{port}/hub/api"
        hub_auth.hub_request_timeout = 0.3
        started = time.monotonic()
        with pytest.raises(web.HTTPBadGateway):
            await hub_auth.authenticate(TokenRequest())
        assert time.monotonic() - started < 5
    finally:
        release.set()
        await runner.cleanup()
