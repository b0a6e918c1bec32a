"""JupyterHub as the front door: a real hub (PyPI ``jupyterhub``) and configurable-http-proxy.

The gateway is the hub's service ``dask-gateway``, configured as docs/jupyterhub.md says
(its hub-side block is this hub's config, its gateway block this gateway's), served under
``/services/dask-gateway`` by its own proxy, which the hub's proxy forwards that path to.
Analysts' code runs in single-user servers the hub spawns (tests/e2e/hub_singleuser.py, with
the environment and token the hub gives them), or in a subprocess with such an environment
and a token made through the hub's REST API. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask.config
import pytest

from client_ext import ElasticGateway
from gateway_backend.embedded import free_port, processes_in

from ..conftest import Gateways
from ..docs_snippets import REPO, hub_config_block, jupyterhub_gateway_block

pytestmark = pytest.mark.e2e

SERVICE = "dask-gateway"
PREFIX = f"/services/{SERVICE}"
# What c.Spawner.server_token_scopes gives a single-user server's token (docs/jupyterhub.md).
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    f"access:services!service={SERVICE}",
]
SINGLE_USER = Path(__file__).with_name("hub_singleuser.py")


def request(url: str, token: str = "", method: str = "GET", body=None, scheme="token"):
    """(status, parsed JSON or text) of one HTTP request; error statuses included."""
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Hub:
    """The running hub and gateway, and how to talk to them."""

    public_url: str  # configurable-http-proxy, as browsers and notebooks reach the hub
    api_url: str  # the hub's own API server (JUPYTERHUB_API_URL of single-user servers)
    admin_token: str
    gateway_direct: str  # the gateway's proxy, prefix included
    tls_proxy: str  # gateway://host:port of the gateway's proxy (DASK_GATEWAY__PROXY_ADDRESS)
    empty_state: Path
    results: Path  # where spawned single-user servers write what they saw

    @property
    def gateway_via_hub(self) -> str:
        return f"{self.public_url}{PREFIX}"

    def token(self, user: str, scopes: list[str] | None = None) -> dict:
        """A new API token of ``user`` (``scopes``: those of a single-user server's token)."""
        status, body = request(
            f"{self.api_url}/users/{user}/tokens",
            self.admin_token,
            "POST",
            {"scopes": scopes or SERVER_TOKEN_SCOPES, "note": "test"},
        )
        assert status == 201, body
        return body

    def spawn(self, user: str, timeout: float = 180) -> dict:
        """Start ``user``'s single-user server; what its notebook saw; stop the server."""
        url = f"{self.api_url}/users/{user}/server"
        status, body = request(url, self.admin_token, "POST")
        assert status in (201, 202), body
        result = self.results / f"{user}.json"
        try:
            deadline = time.monotonic() + timeout
            while not result.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert result.exists(), f"{user}'s server wrote nothing in {timeout}s"
            return json.loads(result.read_text())
        finally:
            request(url, self.admin_token, "DELETE")

    def notebook(self, code: str, token: str, **env: str) -> subprocess.CompletedProcess:
        """Run ``code`` as a notebook cell would, in a single-user server's environment."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JUPYTERHUB_", "DASK_GATEWAY", "ELASTIC_GATEWAY_"))
        }
        base.update(
            PYTHONPATH=str(REPO),
            JUPYTERHUB_API_TOKEN=token,
            JUPYTERHUB_API_URL=self.api_url,
            JUPYTERHUB_PUBLIC_HUB_URL=f"{self.public_url}/hub/",
            DASK_GATEWAY__PROXY_ADDRESS=self.tls_proxy,
            # Not the machine's own `elastic-gateway serve`: nothing to find there.
            ELASTIC_GATEWAY_STATE_DIR=str(self.empty_state),
            ELASTIC_GATEWAY_FORWARD_CREDENTIALS="0",
        )
        base.update(env)
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=base,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=self.empty_state,
        )


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until ``url`` answers at all (any HTTP status); fail with the log if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} not answering after {timeout}s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (the hub and its proxy), SIGKILL after 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    if shutil.which("configurable-http-proxy") is None:
        pytest.skip(
            "configurable-http-proxy (npm) is not on PATH: `npm install --prefix <dir> "
            "configurable-http-proxy@5.3.0` and put <dir>/node_modules/.bin on PATH "
            "(./run test does)"
        )
    tmp = tmp_path_factory.mktemp("jupyterhub")
    (tmp / "results").mkdir()
    (tmp / "no-local-gateway").mkdir()
    hub_port, hub_api_port, chp_api_port = free_port(), free_port(), free_port()
    gateway_port = free_port()
    service_token, admin_token = secrets.token_hex(32), secrets.token_hex(32)
    api_url = f"http://127.0.0.1:{hub_api_port}/hub/api"
    gateways = Gateways(tmp)
    hub_proc = None
    try:
        # The hub waits for its services' URLs at start-up: the gateway goes first.
        gateway = gateways.start(
            jupyterhub_gateway_block()
            + textwrap.dedent(f"""
                c.ElasticJupyterHubAuthenticator.jupyterhub_api_url = "{api_url}"
                # Many hub users' clusters as this one OS account: accepted for the test.
                c.LocalLauncher.allow_shared_local_user = True
                """),
            name="gateway",
            port=gateway_port,
            prefix=PREFIX,
            extra_env={"JUPYTERHUB_API_TOKEN": service_token},
        )
        config = tmp / "jupyterhub_config.py"
        config.write_text(
            hub_config_block()
            + textwrap.dedent(f"""
                c.JupyterHub.services[0]["url"] = "http://127.0.0.1:{gateway_port}"
                c.JupyterHub.services.append(
                    {{"name": "test-admin", "api_token": os.environ["TEST_ADMIN_TOKEN"]}}
                )
                c.JupyterHub.load_roles.append(
                    {{"name": "test-admin", "services": ["test-admin"],
                      "scopes": ["admin:users", "tokens", "admin:groups", "servers"]}}
                )
                # Single-user servers: hub_singleuser.py, as this OS user, homes in tmp.
                c.JupyterHub.public_url = "http://127.0.0.1:{hub_port}/"
                c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
                c.SimpleLocalProcessSpawner.home_dir_template = "{tmp}/home-{{username}}"
                c.Spawner.cmd = ["{sys.executable}", "{SINGLE_USER}"]
                c.Spawner.environment.update({{
                    "DASK_GATEWAY__ADDRESS": "http://127.0.0.1:{hub_port}{PREFIX}",
                    "DASK_GATEWAY__PROXY_ADDRESS": "gateway://127.0.0.1:{gateway_port}",
                    "ELASTIC_GATEWAY_FORWARD_CREDENTIALS": "0",
                    "ELASTIC_TEST_RESULTS": "{tmp / "results"}",
                    "PYTHONPATH": "{REPO}",
                }})
                c.JupyterHub.ip = "127.0.0.1"
                c.JupyterHub.port = {hub_port}
                c.JupyterHub.hub_ip = "127.0.0.1"
                c.JupyterHub.hub_port = {hub_api_port}
                c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{chp_api_port}"
                c.JupyterHub.db_url = "sqlite:///{tmp / "hub.sqlite"}"
                c.JupyterHub.cookie_secret_file = "{tmp / "cookie_secret"}"
                c.JupyterHub.authenticator_class = "dummy"
                c.Authenticator.allowed_users = {{"alice", "bob"}}
                c.JupyterHub.load_groups = {{"cms": {{"users": ["alice"]}}}}
                """)
        )
        log = tmp / "hub.log"
        with open(log, "wb") as out:
            hub_proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "DASK_GATEWAY_HUB_TOKEN": service_token,
                    "TEST_ADMIN_TOKEN": admin_token,
                },
                start_new_session=True,
            )
        public_url = f"http://127.0.0.1:{hub_port}"
        wait_http(f"{api_url}/", hub_proc, log)  # the hub itself, not only its proxy
        yield Hub(
            public_url=public_url,
            api_url=api_url,
            admin_token=admin_token,
            gateway_direct=gateway.address,
            tls_proxy=f"gateway://127.0.0.1:{gateway_port}",
            empty_state=tmp / "no-local-gateway",
            results=tmp / "results",
        )
    finally:
        if hub_proc is not None:
            stop(hub_proc)
        for home in tmp.glob("home-*"):  # single-user servers the hub did not stop
            for proc in processes_in(home):
                proc.kill()
        leaks = gateways.teardown()
        assert not leaks, "; ".join(leaks)


@pytest.fixture(scope="module")
def alices_cluster(hub: Hub) -> dict:
    """What the notebook in alice's single-user server saw (alice is in group cms)."""
    seen = hub.spawn("alice")
    assert "error" not in seen, seen["error"]
    return seen


def test_elastic_gateway_finds_the_gateway_through_the_hubs_service_route(hub, alices_cluster):
    assert alices_cluster["address"] == f"{hub.public_url}{PREFIX}"


def test_the_hubs_public_url_in_a_single_user_server_leads_to_the_service(hub, alices_cluster):
    assert alices_cluster["hub_service_address"] == f"{hub.public_url}{PREFIX}"


def test_a_cms_users_cluster_computes_on_a_worker(alices_cluster):
    assert alices_cluster["answer"] == 2


def test_a_cms_users_cluster_counts_against_vo_cms(alices_cluster):
    assert alices_cluster["details"]["options"]["vo"] == "cms"
    assert alices_cluster["quota"]["vos"]["cms"]["usage"]["clusters"] == 1


def test_the_dashboard_link_opens_through_the_hubs_route(hub, alices_cluster):
    assert alices_cluster["dashboard_link"].startswith(f"{hub.public_url}{PREFIX}/clusters/")
    assert alices_cluster["dashboard_status"] == 200
    assert alices_cluster["dashboard_is_bokeh"]


def test_the_gateways_hub_token_never_reaches_cluster_processes(alices_cluster):
    assert alices_cluster["worker_hub_tokens"] == [None]


def test_a_user_in_no_vo_is_refused_with_the_reason(hub):
    seen = hub.spawn("bob")
    assert "user bob belongs to no VO of this gateway (groups: none)" in seen.get("refused", ""), (
        seen
    )


@pytest.mark.parametrize("route", ["via_hub", "direct"])
def test_a_revoked_token_is_answered_401(hub, route):
    token = hub.token("alice")
    base = hub.gateway_via_hub if route == "via_hub" else hub.gateway_direct
    url = f"{base}/api/v1/clusters/"
    assert request(url, token["token"], scheme="jupyterhub")[0] == 200
    revoke = f"{hub.api_url}/users/alice/tokens/{token['id']}"
    assert request(revoke, hub.admin_token, "DELETE")[0] == 204
    assert request(url, token["token"], scheme="jupyterhub")[0] == 401


QUOTA_CELL = """
from client_ext import ElasticGateway
gw = ElasticGateway()
print(gw.address, sorted(gw.quota()["vos"]))
gw.close()
"""


def test_without_dask_gateway_address_the_hubs_public_url_leads_to_the_gateway(hub):
    result = hub.notebook(QUOTA_CELL, hub.token("alice")["token"])
    assert result.stdout.split() == [hub.gateway_via_hub, "['cms']"], result.stderr[-3000:]


def test_the_gateways_own_proxy_address_serves_the_hubs_users_too(hub):
    token = hub.token("alice")["token"]
    result = hub.notebook(QUOTA_CELL, token, DASK_GATEWAY__ADDRESS=hub.gateway_direct)
    assert result.stdout.split() == [hub.gateway_direct, "['cms']"], result.stderr[-3000:]


def test_a_token_without_access_to_the_service_gets_403_naming_the_scope(hub):
    # JupyterHub's default single-user token: the `server` role, no access to services.
    token = hub.token("alice", ["users:activity!user", "access:servers!server"])["token"]
    status, body = request(f"{hub.gateway_via_hub}/api/v1/clusters/", token, scheme="jupyterhub")
    assert status == 403
    assert f"access:services!service={SERVICE}" in body["error"]


REFUSAL_CELL = """
from client_ext import ElasticGateway, GatewayRefused
gw = ElasticGateway()
try:
    gw.new_cluster()
except GatewayRefused as err:
    print(err.status, err.message)
gw.close()
"""


def test_a_notebook_without_access_to_the_service_is_told_the_scope(hub):
    token = hub.token("alice", ["users:activity!user", "access:servers!server"])["token"]
    result = hub.notebook(REFUSAL_CELL, token)
    assert result.stdout.startswith("403 "), result.stdout + result.stderr[-3000:]
    assert f"lack access:services!service={SERVICE}. Ask the hub" in result.stdout


def test_a_notebook_with_a_revoked_token_is_told_so(hub):
    token = hub.token("alice")
    revoke = f"{hub.api_url}/users/alice/tokens/{token['id']}"
    assert request(revoke, hub.admin_token, "DELETE")[0] == 204
    result = hub.notebook(REFUSAL_CELL, token["token"])
    assert result.stdout.startswith("401 "), result.stdout + result.stderr[-3000:]
    assert "JupyterHub does not accept this token (revoked or expired?)" in result.stdout


def test_the_hub_sends_groups_for_a_token_without_group_scopes(hub):
    # JupyterHub 6 adds read:users:groups for the token's own user to /hub/api/user.
    token = hub.token("alice", [f"access:services!service={SERVICE}"])["token"]
    status, body = request(f"{hub.api_url}/user", token)
    assert status == 200 and body["groups"] == ["cms"]
    status, body = request(
        f"{hub.gateway_via_hub}/api/elastic/v1/quota", token, scheme="jupyterhub"
    )
    assert status == 200 and list(body["vos"]) == ["cms"]


def test_the_local_gateway_under_a_prefix_proves_its_identity_there(gateways, monkeypatch):
    # `elastic-gateway serve` with c.Proxy.prefix records its address with the prefix, and
    # the client's identity check (before the local password is sent) goes below it.
    gateway = gateways.start(f'c.Proxy.prefix = "{PREFIX}"\n', prefix=PREFIX)
    monkeypatch.setenv("ELASTIC_GATEWAY_STATE_DIR", str(gateway.state_dir))
    for name in ("ELASTIC_GATEWAY_ADDRESS", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with dask.config.set({"gateway.address": None}):
        gw = ElasticGateway()
    try:
        assert gw.address == gateway.address.rstrip("/")
        assert gw.address.endswith(PREFIX)
        assert gw.list_clusters() == []
    finally:
        gw.close()
