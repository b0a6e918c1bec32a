"""Clusters stop with the JupyterHub server that created them (``stop_clusters_with_server``).

A real JupyterHub and the gateway as its service (``jupyterhub_env``), configured with
docs/jupyterhub.md's two blocks for the option and a check every second. alice's and bob's
single-user servers each create a cluster with their own token and leave it running;
alice also has one made with a personal token. Then the hub stops alice's server, and
at the end the hub itself stops (taking bob's server with it).
"""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request
from collections.abc import Iterator

import pytest

from ..conftest import wait_for
from ..docs_snippets import server_stop_blocks
from .jupyterhub_env import Hub, running_hub, stop

pytestmark = pytest.mark.e2e

PERIOD = 1  # c.ElasticJupyterHubAuthenticator.server_check_period of this gateway
STOPPED_REASON = "cluster stopped: your JupyterHub server stopped"


class Session:
    """One user's client of the gateway's API. It keeps the gateway's cookie, so it stays
    authenticated (the gateway's cache of who a token is) while the hub is down."""

    def __init__(self, hub: Hub, user: str) -> None:
        self.base = hub.gateway_direct
        self.token = hub.token(user)["token"]  # a personal token: no server
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"jupyterhub {self.token}"},
        )
        with self.opener.open(req, timeout=30) as reply:
            return json.loads(reply.read())

    def details(self, cluster: str) -> dict:
        return self.call("GET", f"/api/elastic/v1/clusters/{cluster}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub_block, gateway_block = server_stop_blocks()
    gateway_config = (
        gateway_block + f"c.ElasticJupyterHubAuthenticator.server_check_period = {PERIOD}\n"
    )
    hub_config = hub_block + textwrap.dedent("""
        c.JupyterHub.load_groups = {"cms": {"users": ["alice", "bob"]}}
        c.Spawner.environment["ELASTIC_TEST_KEEP_CLUSTER"] = "1"
        """)
    with running_hub(tmp_path_factory.mktemp("hubstop"), gateway_config, hub_config) as running:
        yield running


@pytest.fixture(scope="module")
def sessions(hub: Hub) -> dict[str, Session]:
    return {user: Session(hub, user) for user in ("alice", "bob")}


@pytest.fixture(scope="module")
def seen(hub: Hub) -> dict[str, dict]:
    """What alice's and bob's servers saw; their clusters run on."""
    return {user: hub.start_server(user) for user in ("alice", "bob")}


@pytest.fixture(scope="module")
def personal_cluster(sessions: dict[str, Session], seen: dict[str, dict]) -> str:
    """A cluster of alice's made with her personal token, not from her server."""
    return sessions["alice"].call("POST", "/api/v1/clusters/", {"cluster_options": {}})["name"]


@pytest.fixture(scope="module")
def alices_server_stopped(
    hub: Hub, sessions: dict[str, Session], seen: dict[str, dict], personal_cluster: str
) -> dict:
    """The hub stops alice's server; her server's cluster's details once it stopped."""
    assert hub.stop_server("alice") in (202, 204)
    alice, name = sessions["alice"], seen["alice"]["cluster"]
    return wait_for(
        lambda: (d := alice.details(name))["status"] == "STOPPED" and d,
        timeout=15,
        what="alice's cluster to stop with her server",
    )


def test_the_hub_names_a_servers_token_by_its_server(seen):
    assert seen["alice"]["server_scopes"] == ["access:servers!server=alice/"]


def test_a_cluster_from_a_server_says_it_stops_with_it(sessions, seen):
    events = [e["message"] for e in sessions["bob"].details(seen["bob"]["cluster"])["events"]]
    assert any(
        m.startswith("stops when your JupyterHub server stops (unless created with shutdown_on")
        for m in events
    ), events


def test_a_cluster_stops_when_the_server_that_created_it_stops(alices_server_stopped):
    assert alices_server_stopped["stop_reason"] == STOPPED_REASON, alices_server_stopped["events"]
    assert STOPPED_REASON in [e["message"] for e in alices_server_stopped["events"]]


@pytest.fixture(scope="module")
def checks_later(alices_server_stopped: dict) -> None:
    """Three more checks of the hub after alice's server stopped."""
    time.sleep(3 * PERIOD)


def test_another_users_cluster_runs_on(checks_later, sessions, seen):
    assert sessions["bob"].details(seen["bob"]["cluster"])["status"] == "RUNNING"


def test_a_cluster_made_with_a_personal_token_runs_on(checks_later, sessions, personal_cluster):
    details = sessions["alice"].details(personal_cluster)
    assert details["status"] == "RUNNING", details["stop_reason"]


def test_with_the_hub_down_no_cluster_is_stopped(hub, checks_later, sessions, seen):
    stop(hub.process)  # the hub stops bob's server as it goes (JupyterHub's cleanup_servers)
    assert hub.process.poll() is not None
    time.sleep(5 * PERIOD)
    assert sessions["bob"].details(seen["bob"]["cluster"])["status"] == "RUNNING"
    warnings = [
        line
        for line in hub.gateway_log.read_text().splitlines()
        if "Not stopping clusters with their JupyterHub servers for now" in line
    ]
    assert len(warnings) == 1, warnings
