"""Shared fixtures: a real gateway (``elastic-gateway serve``) per test, cleaned up always."""

from __future__ import annotations

import gc
import json
import os
import time
import urllib.error
import urllib.request
import warnings
from base64 import b64encode
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dask_gateway import BasicAuth
from dask_gateway.client import GatewayCluster

from client_ext import ElasticGateway
from gateway_backend.embedded import GatewayProcess

# Short periods so end-to-end tests observe changes within seconds.
FAST_CONFIG = """
c.ElasticBackend.cluster_heartbeat_period = 1
c.ElasticBackend.cluster_heartbeat_timeout = 20
c.ElasticBackend.cluster_status_period = 1
c.ElasticBackend.worker_status_period = 1
c.ElasticBackend.check_timeouts_period = 1
c.ElasticBackend.worker_start_timeout = 60
c.LocalLauncher.stop_grace_period = 3
"""


CONTROL_PLANE_FIXTURE = "kube_env"
# The first test to use the control plane may wait for `./run test`'s background build of it.
CONTROL_PLANE_BUILD_TIMEOUT = 1500


def pytest_collection_modifyitems(session, config, items) -> None:
    """Tests on the Kubernetes control plane run last, module by module, in their own order.

    ``./run test`` builds the control plane in the background while the other tests run (about
    9 minutes on a fresh machine); the first test that needs it waits for the build, so it gets
    a longer timeout.
    """
    needs = [item for item in items if _needs_control_plane(item)]
    if not needs:
        return
    items[:] = [item for item in items if not _needs_control_plane(item)] + needs
    needs[0].add_marker(pytest.mark.timeout(CONTROL_PLANE_BUILD_TIMEOUT))


def _needs_control_plane(item: pytest.Item) -> bool:
    return CONTROL_PLANE_FIXTURE in item.fixturenames or bool(item.get_closest_marker("k8s"))


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "k8s: needs the Kubernetes control plane of tests/k8s (runs last)"
    )


def workers_of(cluster) -> int:
    """Workers connected to the cluster's scheduler, as the client sees them."""
    return len(cluster.scheduler_info.get("workers", {}))


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


class Gateways:
    """Starts gateways for one test; on teardown stops them and checks nothing was left."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[GatewayProcess] = []

    def start(self, extra_config: str = "", name: str = "", **kwargs) -> GatewayProcess:
        # Each gateway its own state directory (database, secrets, config): two sharing
        # one would run each other's clusters.
        name = name or f"gw{len(self.started)}"
        config = self.tmp_path / f"{name}_config.py"
        config.write_text(FAST_CONFIG + extra_config)
        gateway = GatewayProcess(self.tmp_path / name, config_file=config, **kwargs)
        self.started.append(gateway)
        return gateway.start()

    def client(self, gateway: GatewayProcess, username: str | None = None) -> ElasticGateway:
        creds = gateway.client_credentials()
        auth = BasicAuth(username or creds["username"], creds["password"])
        return ElasticGateway(gateway.address, auth=auth)

    def teardown(self) -> list[str]:
        leaks = []
        for gateway in self.started:
            gateway.stop()
            gateway.kill()
            leftovers = gateway.kill_leftovers()
            if leftovers:
                leaks.append(f"{leftovers} processes left in {gateway.state_dir}")
        return leaks


@pytest.fixture(autouse=True)
def no_cluster_client_outlives_its_test(request) -> Iterator[None]:
    """Close the cluster clients a test left open, and name the test that did.

    Left alone, dask_gateway closes them when the interpreter exits, asking gateways
    that are long gone to stop them: a connection error trace after the summary. A
    failed test's traceback keeps its cluster alive; only passing tests are named.
    """
    yield
    if GatewayCluster._instances:
        gc.collect()  # those only a reference cycle kept
    for cluster in list(GatewayCluster._instances):
        if not cluster.asynchronous:
            cluster.close(shutdown=False)  # its gateway was stopped at teardown
        if getattr(request.node, "passed_call", False):
            warnings.warn(f"{request.node.nodeid} left cluster {cluster.name} open", stacklevel=1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.passed_call = report.passed
    return report


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    g = Gateways(tmp_path)
    try:
        yield g
    finally:
        leaks = g.teardown()
    assert not leaks, "; ".join(leaks)


@pytest.fixture
def gateway(gateways: Gateways) -> GatewayProcess:
    return gateways.start()


@pytest.fixture
def gw(gateways: Gateways, gateway: GatewayProcess) -> Iterator[ElasticGateway]:
    client = gateways.client(gateway)
    try:
        yield client
    finally:
        client.close()


def http(
    gateway: GatewayProcess,
    method: str,
    path: str,
    body: dict | None = None,
    username: str | None = None,
    timeout: float = 30,
) -> tuple[int, dict]:
    """A raw authenticated API call, for checking status codes and messages exactly;
    raises OSError (TimeoutError included) when no answer came within ``timeout``."""
    creds = gateway.client_credentials()
    token = b64encode(f"{username or creds['username']}:{creds['password']}".encode()).decode()
    req = urllib.request.Request(
        gateway.address + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, {"error": raw.decode(errors="replace")}


def process_groups(gateway: GatewayProcess) -> set[int]:
    """Process groups running in the gateway's cluster directories (scheduler + one per worker)."""
    groups = set()
    for proc in gateway.leftover_processes():
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            pass
    return groups
