"""The chart's rendered configuration runs a real gateway.

The ConfigMap rendered by real Helm (gateway_config.py + values.json) and the secrets of the
rendered Secret, passed as environment the way the pod gets them, start upstream's
``dask-gateway-server`` with its Go proxy; an analyst then logs in with the generated password
and computes on a cluster. Only the listen addresses change (loopback, free ports) and the
scheduler launcher is ``local`` (no Kubernetes here), both through the chart's own values:
``gateway.extraConfig`` and ``gateway.backend``.
"""

from __future__ import annotations

import base64
import getpass
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dask.config
import pytest

from client_ext import ElasticGateway
from gateway_backend.embedded import GatewayProcess, free_port

from ..conftest import wait_for
from ..unit.chart_render import find, render

LOOPBACK = """\
c.DaskGateway.address = "127.0.0.1:{api}"
c.Proxy.address = "127.0.0.1:{http}"
c.Proxy.tcp_address = "127.0.0.1:{tls}"
c.ElasticBackend.api_url = "http://127.0.0.1:{http}/api"
"""


@pytest.fixture
def chart_gateway(
    tmp_path: Path,
) -> Iterator[tuple[GatewayProcess, dict[str, str], dict[str, int]]]:
    ports = {"api": free_port(), "http": free_port(), "tls": free_port()}
    values = {
        "gateway": {
            "ports": ports,
            "backend": {
                "schedulerLauncher": "local",
                "pools": {"local": {"launcher": "local", "max_workers": 2}},
                "local": {"single_user": getpass.getuser()},
                "maxWorkerCores": 1,
                "maxWorkerMemory": 1,
            },
            "extraConfig": {"loopback": LOOPBACK.format(**ports)},
        }
    }
    objects = render(values)
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    for name, text in find(objects, "ConfigMap")["data"].items():
        (config_dir / name).write_text(text)
    secret = {k: base64.b64decode(v).decode() for k, v in find(objects, "Secret")["data"].items()}
    state_dir = tmp_path / "state"
    env = {
        "ELASTIC_GATEWAY_STATE_DIR": str(state_dir),
        "DASK_GATEWAY_ENCRYPT_KEYS": secret["encrypt-keys"],
        "ELASTIC_GATEWAY_METRICS_TOKEN": secret["metrics-token"],
        "ELASTIC_GATEWAY_SIMPLE_PASSWORD": secret["simple-password"],
    }
    command = [
        str(Path(sys.executable).parent / "dask-gateway-server"),
        "-f",
        str(config_dir / "gateway_config.py"),
    ]
    gateway = GatewayProcess(state_dir, port=ports["http"], command=command, extra_env=env)
    try:
        gateway.start(timeout=90)
        yield gateway, secret, ports
    finally:
        gateway.stop()
        gateway.kill()
        leftovers = gateway.kill_leftovers()
    assert leftovers == 0, f"{leftovers} cluster processes outlived the gateway"


def status(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_rendered_config_serves_health_through_the_proxy(chart_gateway):
    gateway, _, _ = chart_gateway
    assert status(gateway.address + "/api/health", {}) == 200


def test_generated_password_is_the_only_one_accepted(chart_gateway):
    gateway, secret, _ = chart_gateway
    clusters = gateway.address + "/api/v1/clusters/"
    assert status(clusters, basic("alice", secret["simple-password"])) == 200
    assert status(clusters, basic("alice", "not-" + secret["simple-password"])) == 401


def test_metrics_token_from_the_secret_opens_the_metrics(chart_gateway):
    gateway, secret, _ = chart_gateway
    metrics = gateway.address + "/api/elastic/v1/metrics"
    assert status(metrics, {"Authorization": f"Bearer {secret['metrics-token']}"}) == 200
    assert status(metrics, {"Authorization": "Bearer wrong"}) != 200


def test_analyst_computes_with_the_environment_of_the_deploy_guide(chart_gateway, monkeypatch):
    # docs/deploy.md, "Connect from a notebook": the address, the proxy's TLS port (not its
    # HTTP port) and the password come from the environment; ElasticGateway() takes no argument.
    gateway, secret, ports = chart_gateway
    monkeypatch.setenv("ELASTIC_GATEWAY_ADDRESS", gateway.address)
    monkeypatch.setenv("DASK_GATEWAY__PROXY_ADDRESS", f"gateway://127.0.0.1:{ports['tls']}")
    monkeypatch.setenv("DASK_GATEWAY__AUTH__TYPE", "basic")
    monkeypatch.setenv("DASK_GATEWAY__AUTH__KWARGS__USERNAME", getpass.getuser())
    monkeypatch.setenv("DASK_GATEWAY__AUTH__KWARGS__PASSWORD", secret["simple-password"])
    dask.config.refresh()  # a notebook's kernel reads its environment at start
    try:
        with ElasticGateway() as gw:
            cluster = gw.new_cluster(worker_cores=1, worker_memory=1)
            try:
                cluster.scale(1)
                with cluster.get_client() as client:
                    client.wait_for_workers(1, timeout=120)
                    assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            finally:
                cluster.shutdown()
        # The gateway stops the cluster's processes (clusters outlive a gateway restart).
        wait_for(lambda: not gateway.leftover_processes(), what="the cluster's processes to end")
    finally:
        monkeypatch.undo()
        dask.config.refresh()
