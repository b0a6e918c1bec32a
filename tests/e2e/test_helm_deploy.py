"""The Helm chart deployed on the real control plane: the gateway pod serves clusters.

The chart (``deploy/helm/elastic-gateway``, or ``ELASTIC_GATEWAY_CHART_DIR``) is rendered by
Helm's own Go SDK (helm-python-sdk) and every object is server-side applied as a cluster
admin; the Deployment controller makes the ReplicaSet and the pod, and the process kubelet
runs the pod's ``dask-gateway-server`` with its ConfigMap, Secret env and ServiceAccount token
(in-cluster config). An unmodified ``dask_gateway`` client reaches it through the chart's
public Service, resolved as kube-proxy would (see ``tests/k8s/chart.py``), and gets scheduler
and worker pods in the namespace.

Two things differ from a real cluster, both because the process kubelet runs every pod on
this host's network without cluster DNS: the gateway's ports are free ports of this host
rather than the defaults (scheduler pods pick their own ports, ``*_port: 0``, so nothing
collides), and ``ElasticBackend.api_url`` names the address the ``<fullname>-api`` Service
resolves to instead of its DNS name (a test below checks that it is the same place).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from gateway_backend.embedded import free_port

from ..conftest import wait_for, workers_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
from chart import CHART_DIR, FIELD_MANAGER, render_chart, server_side_apply, service_endpoint
from harness import REAL_KUBECONFIG, KubeEnv, ProcessKubelet, TestNamespace

REPO = Path(__file__).resolve().parents[2]
RELEASE = "eg"
FULLNAME = f"{RELEASE}-elastic-gateway"
SCHEDULER = "app.kubernetes.io/component=dask-scheduler"
WORKER = "app.kubernetes.io/component=dask-worker"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.k8s,
    pytest.mark.skipif(bool(REAL_KUBECONFIG), reason="runs the gateway pod on the process kubelet"),
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="the gateway pod's ServiceAccount token is mounted at its fixed path in a "
        "private mount namespace, which the process kubelet makes only as root",
    ),
    pytest.mark.skipif(not (CHART_DIR / "Chart.yaml").exists(), reason=f"no chart at {CHART_DIR}"),
]


def chart_values(namespace: str, ports: dict[str, int]) -> dict:
    """Values for this host: free ports, simple auth, schedulers and workers as pods."""
    return {
        "gateway": {
            "ports": ports,
            # The gateway pod imports this checkout's gateway_backend (the image's, elsewhere).
            "extraEnv": [{"name": "PYTHONPATH", "value": str(REPO)}],
            "auth": {"type": "simple"},
            "state": {"persistence": {"enabled": False}},
            "backend": {
                "schedulerLauncher": "kubernetes",
                "pools": {"pods": {"launcher": "kubernetes", "max_workers": 4}},
                "kubernetes": {
                    "namespace": namespace,
                    "image": "ignored-by-the-process-kubelet",
                    "scheduler_port": 0,
                    "dashboard_port": 0,
                    "api_port": 0,
                },
            },
            "extraConfig": {
                "50-no-cluster-dns": (
                    f'c.ElasticBackend.api_url = "http://127.0.0.1:{ports["api"]}/api"'
                )
            },
        }
    }


class Deployed:
    """The chart installed in a fresh namespace, its gateway pod run by a process kubelet."""

    def __init__(self, env: KubeEnv, tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.admin = env.admin
        self.ns = TestNamespace(env, tmp)
        self.kubelet: ProcessKubelet | None = None
        self.ports = {"api": free_port(), "http": free_port(), "tls": free_port()}

    def install(self) -> Deployed:
        self.ns.create()
        self.kubelet = ProcessKubelet(self.env, self.ns.name, self.tmp).start()
        values = chart_values(self.ns.name, self.ports)
        self.docs = render_chart(self.env.admin_kubeconfig, RELEASE, self.ns.name, values)
        self.stored = server_side_apply(self.admin, self.docs, self.ns.name)
        self.http = wait_for(self.endpoint("http"), timeout=60, what="a Ready gateway pod")
        self.tls = self.endpoint("tls")()
        url = f"http://{self.http[0]}:{self.http[1]}/api/health"
        wait_for(lambda: self.answers(url), timeout=60, what=f"{url} (the gateway's health)")
        return self

    def endpoint(self, port: str, service: str = FULLNAME):
        return lambda: service_endpoint(self.admin, self.ns.name, service, port)

    @staticmethod
    def answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def secret_values(self) -> dict[str, str]:
        secret = self.admin.get(f"/api/v1/namespaces/{self.ns.name}/secrets/{FULLNAME}")
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}

    def pods(self, selector: str) -> list[dict]:
        return self.admin.items(f"/api/v1/namespaces/{self.ns.name}/pods", labelSelector=selector)

    def gateway_pod_dir(self) -> Path:
        [pod] = self.pods("app.kubernetes.io/component=gateway")
        meta = pod["metadata"]
        return self.kubelet.root / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"

    def gateway_log(self) -> str:
        return (self.gateway_pod_dir() / "gateway.log").read_text(errors="replace")

    def close(self) -> int:
        killed = 0
        try:
            if self.kubelet is not None:
                killed = self.kubelet.stop()
        finally:
            self.ns.delete()
        return killed


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    env = KubeEnv().start()
    d = None
    try:
        d = Deployed(env, tmp_path_factory.mktemp("helm"))
        try:
            d.install()
        except BaseException:
            if d.kubelet is not None:
                print(f"---- process kubelet ----\n{d.kubelet.log_tail(80)}", file=sys.stderr)
                for log in d.kubelet.root.glob("*/gateway.log"):
                    print(f"---- {log} ----\n{log.read_text()[-6000:]}", file=sys.stderr)
            raise
        yield d
    finally:
        killed = d.close() if d is not None else 0
        env.stop()
    assert killed == 0, f"{killed} pod processes outlived the process kubelet"


def test_the_api_server_accepts_every_chart_object_by_server_side_apply(deployed):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in deployed.docs}
    assert {("Deployment", FULLNAME), ("Service", FULLNAME), ("ConfigMap", FULLNAME)} <= kinds
    assert {("Service", f"{FULLNAME}-api"), ("Secret", FULLNAME)} <= kinds
    for doc, stored in zip(deployed.docs, deployed.stored, strict=True):
        assert (stored["kind"], stored["metadata"]["name"]) == (
            doc["kind"],
            doc["metadata"]["name"],
        )
        assert stored["metadata"]["uid"] and stored["metadata"]["resourceVersion"]
        managers = {m["manager"]: m["operation"] for m in stored["metadata"]["managedFields"]}
        assert managers.get(FIELD_MANAGER) == "Apply", managers


def test_the_deployment_controller_runs_the_gateway_pod_from_the_chart(deployed):
    [pod] = deployed.pods("app.kubernetes.io/component=gateway")
    [owner] = pod["metadata"]["ownerReferences"]
    assert owner["kind"] == "ReplicaSet" and owner["name"].startswith(f"{FULLNAME}-")
    assert pod["spec"]["serviceAccountName"] == FULLNAME
    assert pod["status"]["phase"] == "Running"
    # The public Service's named ports lead to the gateway's proxy; -api to its private API.
    assert deployed.http == ("127.0.0.1", deployed.ports["http"])
    assert deployed.tls == ("127.0.0.1", deployed.ports["tls"])
    api = deployed.endpoint("api", f"{FULLNAME}-api")()
    assert api == ("127.0.0.1", deployed.ports["api"])  # where api_url points schedulers


# Upstream's Gateway.__del__ closes the already closed client again and raises (as in
# tests/e2e/test_local.py); collected here, so it is not reported at the end of the run.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function Gateway.__del__:pytest.PytestUnraisableExceptionWarning"
)
def test_an_unmodified_dask_gateway_client_gets_a_cluster_of_pods_through_the_service(deployed):
    from dask_gateway import BasicAuth, Gateway

    password = deployed.secret_values()["simple-password"]
    (host, http), (_, tls) = deployed.http, deployed.tls
    with Gateway(
        f"http://{host}:{http}",
        proxy_address=f"gateway://{host}:{tls}",
        auth=BasicAuth("ana", password),
    ) as gw:
        cluster = gw.new_cluster()
        mine = f"gateway.dask.org/cluster={cluster.name}"
        try:
            cluster.scale(1)
            wait_for(lambda c=cluster: workers_of(c) == 1, timeout=60, what="1 pod worker")
            assert len(deployed.pods(f"{SCHEDULER},{mine}")) == 1
            assert len(deployed.pods(f"{WORKER},{mine}")) == 1
            with cluster.get_client() as client:
                assert client.submit(sum, range(10)).result(timeout=30) == 45
        finally:
            cluster.shutdown()
    del cluster, client, gw
    gc.collect()
    left = lambda: deployed.pods(mine)  # noqa: E731
    wait_for(lambda: not left(), timeout=30, what="scheduler and worker pods deleted")


def test_no_secret_value_is_in_the_gateway_log_or_any_non_secret_object(deployed):
    secrets = deployed.secret_values()
    token_dirs = list((deployed.gateway_pod_dir() / "volumes").glob("kube-api-access-*"))
    tokens = [(d / "token").read_text() for d in token_dirs]
    assert tokens, "the gateway pod has its ServiceAccount token"
    assert set(secrets) >= {"simple-password", "encrypt-keys"}
    log = deployed.gateway_log()
    assert "Dask-Gateway server started" in log  # the gateway's own log, not an empty file
    objects = json.dumps([d for d in deployed.docs if d["kind"] != "Secret"])
    for name, value in [*secrets.items(), *(("token", t) for t in tokens)]:
        for part in value.split(";"):
            assert part not in log, f"{name} in the gateway log"
            assert part not in objects, f"{name} in a non-Secret object"


def test_an_upgrade_keeps_the_generated_secrets(deployed):
    """`helm upgrade` renders against the live release: `lookup` keeps every generated value."""
    before = deployed.secret_values()
    values = chart_values(deployed.ns.name, deployed.ports)
    upgrade = render_chart(
        deployed.env.admin_kubeconfig, RELEASE, deployed.ns.name, values, is_install=False
    )
    [secret] = [d for d in upgrade if d["kind"] == "Secret" and d["metadata"]["name"] == FULLNAME]
    rendered = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert rendered == before
    server_side_apply(deployed.admin, upgrade, deployed.ns.name)
    assert deployed.secret_values() == before
