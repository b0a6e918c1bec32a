"""Which clusters stop with the JupyterHub server that created them (``hub_servers``).

The hub's replies are shaped as JupyterHub 6 sends them (tests/e2e/
test_jupyterhub_server_stop.py runs the same path against a real hub); cluster records
are dask-gateway's own.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
from aiohttp import web
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.utils import FrozenAttrDict
from traitlets import TraitError

from gateway_backend.embedded import free_port
from gateway_backend.hub_servers import (
    TIE_KEY,
    HubAnswerError,
    HubServerWatch,
    ServerStops,
    active_servers,
    server_of_token,
)
from gateway_backend.jupyterhub_auth import ElasticJupyterHubAuthenticator, HubUser, TokenUserCache

ACCESS = "access:services!service=dask-gateway"
SERVER_TOKEN = [ACCESS, "access:servers!server=alice/", "users:activity!user=alice"]
STARTED = "2026-12-01T10:00:00.000000Z"


def whoami(name: str = "alice", kind: str = "user", scopes: list[str] = SERVER_TOKEN) -> dict:
    return {"kind": kind, "name": name, "admin": False, "groups": ["cms"], "scopes": scopes}


def cluster(name: str = "c1", user: str = "alice", server: str | None = "", **fields):
    """A cluster record as the check reads it (created at 1000 ms, running)."""
    config = {} if server is None else {TIE_KEY: {"user": user, "server": server}}
    record = {"name": name, "username": user, "config": FrozenAttrDict(config), "state": {}}
    record.update(start_time=1000, target=JobStatus.RUNNING)
    return SimpleNamespace(**{**record, **fields})


def running(**servers: dict[str, str]) -> dict[str, dict[str, str]]:
    return servers


# -- which server a token belongs to ------------------------------------------------------
def test_a_servers_token_names_its_default_server():
    assert server_of_token(whoami()) == {"user": "alice", "server": ""}


def test_a_named_servers_token_names_that_server():
    scopes = [ACCESS, "access:servers!server=alice/gpu"]
    assert server_of_token(whoami(scopes=scopes)) == {"user": "alice", "server": "gpu"}


def test_a_personal_token_names_no_server():
    assert server_of_token(whoami(scopes=[ACCESS, "access:servers!user=alice"])) is None


def test_a_token_for_several_servers_names_none():
    scopes = [ACCESS, "access:servers!server=alice/", "access:servers!server=alice/gpu"]
    assert server_of_token(whoami(scopes=scopes)) is None


def test_a_token_for_another_users_server_names_none():
    assert server_of_token(whoami(scopes=[ACCESS, "access:servers!server=bob/"])) is None


def test_a_services_token_names_no_server():
    assert server_of_token(whoami(name="alice", kind="service")) is None


def test_the_authenticator_ties_users_only_with_the_option_on():
    auth = ElasticJupyterHubAuthenticator(log=logging.getLogger("test-hub-servers"))
    assert auth.user_from_model(whoami()).jupyterhub_server is None
    auth.stop_clusters_with_server = True
    assert auth.user_from_model(whoami()).jupyterhub_server == {"user": "alice", "server": ""}


# -- the cache of who a token is: one entry per token ----------------------------------------
def hub_user(key: str, server: str) -> HubUser:
    user = HubUser("alice", server={"user": "alice", "server": server})
    user.cache_key = key
    return user


def test_two_tokens_of_one_user_get_their_own_cookies_and_servers():
    cache = TokenUserCache(max_age=300)
    first, second = cache.put(hub_user("t1", "")), cache.put(hub_user("t2", "gpu"))
    assert first != second
    assert cache.get(second).jupyterhub_server["server"] == "gpu"


def test_expired_cache_entries_go_when_new_ones_come(monkeypatch):
    cache = TokenUserCache(max_age=300)
    old = cache.put(hub_user("t1", ""))
    later = time.monotonic() + 301
    monkeypatch.setattr(time, "monotonic", lambda: later)
    cache.put(hub_user("t2", ""))
    assert old not in cache.cookie_to_user and list(cache.name_to_cookie) == ["t2"]


# -- what the hub says runs ------------------------------------------------------------------
def test_active_servers_are_read_from_the_users_list():
    users = [
        {"name": "alice", "servers": {"": {"started": STARTED, "stopped": False}}},
        {"name": "bob", "servers": {}},
    ]
    assert active_servers(users) == {"alice": {"": STARTED}, "bob": {}}


def test_a_users_list_without_servers_is_no_answer():
    with pytest.raises(HubAnswerError, match="read:servers"):
        active_servers([{"name": "alice"}])


# -- the decision ------------------------------------------------------------------------------
def test_a_cluster_whose_server_stopped_is_stopped_saying_so():
    [(stopped, reason)] = ServerStops().decide([cluster()], running(), asked_ms=2000)
    assert (stopped.name, reason) == ("c1", "cluster stopped: your JupyterHub server stopped")


def test_a_cluster_whose_server_runs_is_kept():
    assert ServerStops().decide([cluster()], running(alice={"": STARTED}), 2000) == []


def test_a_cluster_whose_server_was_started_again_is_stopped():
    stops = ServerStops()
    assert stops.decide([cluster()], running(alice={"": STARTED}), 2000) == []
    [(_, reason)] = stops.decide([cluster()], running(alice={"": "2026-12-01T11:00"}), 3000)
    assert reason == "cluster stopped: your JupyterHub server was restarted"


def test_only_the_server_that_made_the_cluster_counts():
    gpu = cluster(server="gpu")
    [(_, reason)] = ServerStops().decide([gpu], running(alice={"": STARTED}), 2000)
    assert reason == "cluster stopped: your JupyterHub server 'gpu' stopped"


def test_another_users_stopped_server_stops_none_of_alices_clusters():
    mine = cluster(user="alice")
    assert ServerStops().decide([mine], running(alice={"": STARTED}, bob={}), 2000) == []


def test_a_hostile_server_name_is_quoted_in_the_reason():
    [(_, reason)] = ServerStops().decide([cluster(server="x\nFAKE")], running(), 2000)
    assert "\n" not in reason and "'x\\nFAKE'" in reason


def test_a_cluster_newer_than_the_hubs_answer_waits_for_the_next_check():
    assert ServerStops().decide([cluster(start_time=2000)], running(), asked_ms=2000) == []


def test_a_cluster_created_with_shutdown_on_close_false_is_kept():
    detached = cluster(state={"clients": {"detached": True}})
    assert ServerStops().decide([detached], running(), 2000) == []


def test_a_cluster_not_tied_to_a_server_is_kept():
    assert ServerStops().decide([cluster(server=None)], running(), 2000) == []


def test_a_cluster_already_stopping_is_left_alone():
    assert ServerStops().decide([cluster(target=JobStatus.STOPPED)], running(), 2000) == []


# -- the periodic check --------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.stopped: list[tuple[str, str]] = []

    async def __call__(self, cluster, reason: str) -> None:
        self.stopped.append((cluster.name, reason))


@pytest.fixture
async def hub():
    auth = ElasticJupyterHubAuthenticator(log=logging.getLogger("test-hub-servers"))
    auth.jupyterhub_api_token = "gateway-token"
    auth.hub_request_timeout = 2
    await auth.setup(None)
    try:
        yield auth
    finally:
        await auth.cleanup()


async def test_an_unreachable_hub_stops_nothing_and_is_logged_once(hub, caplog):
    hub.jupyterhub_api_url = f"http://127.0.0.1:{free_port()}/hub/api"  # nothing there
    stop = Recorder()
    watch = HubServerWatch(hub, lambda: [cluster()], stop, logging.getLogger("t"), lambda: 2000)
    for _ in range(3):
        await watch.check()
    assert stop.stopped == []
    logged = [r for r in caplog.records if "Not stopping clusters" in r.getMessage()]
    assert len(logged) == 1 and "gateway-token" not in logged[0].getMessage()


async def test_without_tied_clusters_the_hub_is_not_asked(hub):
    hub.jupyterhub_api_url = "http://127.0.0.1:1/hub/api"  # would fail if asked
    stop = Recorder()
    watch = HubServerWatch(hub, lambda: [cluster(server=None)], stop, logging.getLogger("t"), int)
    await watch.check()
    assert stop.stopped == [] and not watch._trouble


@pytest.fixture
async def hub_replies(hub):
    """A loopback HTTP server answering the two hub routes the check uses, with replies
    set by the test (shaped as JupyterHub 6's: ``/user`` of the service, pages of users)."""
    replies: dict = {"scopes": ["list:users", "read:servers"], "pages": [[]]}
    asked: list[dict] = []

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"kind": "service", "name": "dask-gateway", **replies})

    async def users(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        offset, pages = int(request.query["offset"]), replies["pages"]
        index = offset // 2
        more = index + 1 < len(pages)
        return web.json_response(
            {
                "items": pages[index],
                "_pagination": {"offset": offset, "next": {"offset": offset + 2} if more else None},
            }
        )

    app = web.Application()
    app.router.add_get("/hub/api/user", whoami)
    app.router.add_get("/hub/api/users", users)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hub.jupyterhub_api_url = f"http://127.0.0.1:{port}/hub/api"
    try:
        yield replies, asked
    finally:
        await runner.cleanup()


async def test_a_gateway_token_without_read_servers_stops_nothing_and_names_the_scope(
    hub, hub_replies, caplog
):
    replies, _ = hub_replies
    replies["scopes"] = ["list:users"]
    stop = Recorder()
    await HubServerWatch(hub, lambda: [cluster()], stop, logging.getLogger("t"), int).check()
    assert stop.stopped == []
    assert "lacks the scope(s) read:servers" in caplog.text


async def test_a_filtered_list_users_scope_counts_as_missing(hub, hub_replies, caplog):
    replies, _ = hub_replies
    replies["scopes"] = ["list:users!group=cms", "read:servers"]
    stop = Recorder()
    await HubServerWatch(hub, lambda: [cluster()], stop, logging.getLogger("t"), int).check()
    assert stop.stopped == [] and "lacks the scope(s) list:users" in caplog.text


async def test_every_page_of_active_users_is_read(hub, hub_replies):
    replies, asked = hub_replies
    alice = {"name": "alice", "servers": {"": {"started": STARTED}}}
    replies["pages"] = [[{"name": "bob", "servers": {}}], [alice]]
    stop = Recorder()
    clusters = [cluster("mine"), cluster("bobs", user="bob")]
    await HubServerWatch(hub, lambda: clusters, stop, logging.getLogger("t"), lambda: 2000).check()
    assert [q["state"] for q in asked] == ["active", "active"]
    assert [name for name, _ in stop.stopped] == ["bobs"]


@pytest.mark.parametrize("period", [0, -1])
def test_a_check_period_that_is_not_above_zero_is_refused_naming_the_setting(period):
    with pytest.raises(TraitError, match=r"ElasticJupyterHubAuthenticator\.server_check_period"):
        ElasticJupyterHubAuthenticator(server_check_period=period)
