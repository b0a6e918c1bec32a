"""A real JupyterHub (PyPI ``jupyterhub``) with configurable-http-proxy, and a gateway as its
service, for the tests that need them (test_jupyterhub.py, test_jupyterhub_server_stop.py).

The gateway is the hub's service ``dask-gateway``, configured as docs/jupyterhub.md says
(its hub-side block is this hub's config, its gateway block this gateway's), served under
``/services/dask-gateway`` by its own proxy, which the hub's proxy forwards that path to.
Single-user servers are tests/e2e/hub_singleuser.py. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
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

import pytest

from gateway_backend.embedded import free_port, processes_in

from ..conftest import Gateways
from ..docs_snippets import REPO, hub_config_block, jupyterhub_gateway_block

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
    process: subprocess.Popen  # the hub (its proxy in its process group)
    gateway_log: Path

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
        try:
            return self.start_server(user, timeout)
        finally:
            self.stop_server(user)

    def start_server(self, user: str, timeout: float = 180) -> dict:
        """Start ``user``'s single-user server and return what its notebook saw; it runs on."""
        status, body = request(f"{self.api_url}/users/{user}/server", self.admin_token, "POST")
        assert status in (201, 202), body
        result = self.results / f"{user}.json"
        deadline = time.monotonic() + timeout
        while not result.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert result.exists(), f"{user}'s server wrote nothing in {timeout}s"
        return json.loads(result.read_text())

    def stop_server(self, user: str) -> int:
        """Ask the hub to stop ``user``'s default server (the HTTP status it answers)."""
        return request(f"{self.api_url}/users/{user}/server", self.admin_token, "DELETE")[0]

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


@contextlib.contextmanager
def running_hub(tmp: Path, gateway_config: str = "", hub_config: str = "") -> Iterator[Hub]:
    """The hub (users alice, in group cms, and bob) and its gateway, stopped on exit.

    ``gateway_config`` and ``hub_config`` are added after the docs' blocks and the test's
    own settings.
    """
    if shutil.which("configurable-http-proxy") is None:
        pytest.skip(
            "configurable-http-proxy (npm) is not on PATH: `npm install --prefix <dir> "
            "configurable-http-proxy@5.3.0` and put <dir>/node_modules/.bin on PATH "
            "(./run test does)"
        )
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
                """)
            + gateway_config,
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
            + hub_config
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
            process=hub_proc,
            gateway_log=gateway.log_path,
        )
    finally:
        if hub_proc is not None:
            stop(hub_proc)
        for home in tmp.glob("home-*"):  # single-user servers the hub did not stop
            for proc in processes_in(home):
                proc.kill()
        leaks = gateways.teardown()
        assert not leaks, "; ".join(leaks)
