"""Kubernetes pods end to end: real gateway and proxy, a real kube-apiserver, real RBAC.

By default a local control plane (etcd, kube-apiserver, kube-controller-manager built from Go
modules, see tests/k8s/README.md) starts once for this file, and each test gets a namespace,
deploy/rbac.yaml applied in it, a gateway authenticated as exactly that ServiceAccount, and a
process kubelet (tests/fakes/kubernetes) that runs the pods as local processes.

Against a real cluster: set ``ELASTIC_GATEWAY_TEST_KUBECONFIG`` (admin credentials: the tests
create namespaces, Roles and ServiceAccount tokens), ``ELASTIC_GATEWAY_TEST_IMAGE`` (an image
with the same dask/dask-gateway versions) and ``ELASTIC_GATEWAY_TEST_GATEWAY_HOST`` (this
machine's address as pods see it; pod IPs must be routable from here). Tests that stop or cut
the API server, compact etcd or set a node's capacity are skipped there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from gateway_backend.embedded import free_port
from gateway_backend.launchers.kubernetes import REQUIRED_PERMISSIONS

from ..conftest import wait_for, workers_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
from harness import (
    REAL_KUBECONFIG,
    CuttableProxy,
    KubeEnv,
    ProcessKubelet,
    SyncKube,
    TestNamespace,
)

pytestmark = pytest.mark.e2e
local_only = pytest.mark.skipif(
    bool(REAL_KUBECONFIG), reason="needs the local control plane (outages, etcd, capacities)"
)

REPO = Path(__file__).resolve().parents[2]
BINDIR = os.path.dirname(sys.executable)
SCHEDULER = {"app.kubernetes.io/component": "dask-scheduler"}
WORKER = {"app.kubernetes.io/component": "dask-worker"}


@pytest.fixture(scope="module")
def kube_env():
    env = KubeEnv().start()
    try:
        yield env
    finally:
        env.stop()


class K8sGateway:
    """One test's namespace, process kubelet and gateway running pods there."""

    def __init__(self, env: KubeEnv, gateways, tmp: Path) -> None:
        self.env = env
        self.gateways = gateways
        self.tmp = tmp
        self.gateway_id = f"gw-{uuid.uuid4().hex[:8]}"
        self.ns = None
        self.kubelet = None
        self.proxy = None
        self.gateway = None
        self.gw = None

    def start(
        self,
        *,
        cpu="16",
        max_pods=50,
        drop=None,
        via_proxy=False,
        extra="",
        start_delay=0.0,
        pod_network=None,
        port=None,
    ) -> K8sGateway:
        self.ns = TestNamespace(self.env, self.tmp).create(drop=drop)
        if self.env.local:
            self.kubelet = ProcessKubelet(
                self.env,
                self.ns.name,
                self.tmp,
                cpu=cpu,
                max_pods=max_pods,
                start_delay=start_delay,
                pod_network=pod_network,
            ).start()
        server = None
        if via_proxy:
            self.proxy = CuttableProxy(("127.0.0.1", self.env.cp.apiserver_port))
            server = self.proxy.url
        self.kubeconfig = self.ns.gateway_kubeconfig(server)
        self.port = port or free_port()
        self.gateway = self.gateways.start(self.config(extra), port=self.port)
        self.gw = self.gateways.client(self.gateway)
        return self

    def config(self, extra: str) -> str:
        lines = [
            'c.ElasticBackend.scheduler_launcher = "kubernetes"',
            'c.ElasticBackend.worker_pools = {"pods": {"launcher": "kubernetes"}}',
            "c.ElasticBackend.worker_start_timeout = 120",
            "c.ElasticBackend.cluster_start_timeout = 120",
            "c.ElasticBackend.launcher_retry_delay = 2",
            f"c.KubernetesLauncher.kubeconfig = {self.kubeconfig!r}",
            f"c.KubernetesLauncher.namespace = {self.ns.name!r}",
            f"c.KubernetesLauncher.gateway_id = {self.gateway_id!r}",
            # Gateways sharing one schedd stand-in must not sweep each other's jobs.
            f"c.HTCondorLauncher.gateway_id = {self.gateway_id!r}",
            "c.KubernetesLauncher.termination_grace_period = 5",
            "c.KubernetesLauncher.reconcile_period = 2",
            "c.KubernetesLauncher.request_timeout = 5",
            "c.KubernetesLauncher.api_retry_timeout = 5",
            "c.KubernetesLauncher.watch_backoff_max = 2",
            "c.KubernetesLauncher.startup_sync_timeout = 10",
        ]
        if self.env.local:
            # All pods share this machine's network: let each scheduler pick free ports.
            lines += [
                "c.KubernetesLauncher.scheduler_port = 0",
                "c.KubernetesLauncher.dashboard_port = 0",
                "c.KubernetesLauncher.api_port = 0",
                'c.KubernetesLauncher.image = "ignored-by-the-process-kubelet"',
            ]
        else:
            host = os.environ.get("ELASTIC_GATEWAY_TEST_GATEWAY_HOST", "")
            if not host:
                pytest.fail(
                    "ELASTIC_GATEWAY_TEST_KUBECONFIG is set: also set "
                    "ELASTIC_GATEWAY_TEST_GATEWAY_HOST to this machine's address as pods reach it"
                )
            image = os.environ.get("ELASTIC_GATEWAY_TEST_IMAGE", "")
            if image:
                lines.append(f"c.KubernetesLauncher.image = {image!r}")
            lines += [
                f'c.Proxy.address = ":{self.port}"',
                f'c.ElasticBackend.api_url = "http://{host}:{self.port}/api"',
            ]
        return "\n".join(lines) + "\n" + extra

    def pods(self, cluster=None, **labels) -> list[dict]:
        sel = {"gateway.dask.org/instance": self.gateway_id, **labels}
        if cluster is not None:
            sel["gateway.dask.org/cluster"] = cluster.name
        return [
            p for p in self.ns.objects("pods", **sel) if not p["metadata"].get("deletionTimestamp")
        ]

    def worker_pod_names(self, cluster) -> set[str]:
        return {
            p["metadata"]["labels"]["gateway.dask.org/worker"] for p in self.pods(cluster, **WORKER)
        }

    def everything(self, cluster) -> dict[str, set[str]]:
        sel = {"gateway.dask.org/cluster": cluster.name}
        return {kind: self.ns.names(kind, **sel) for kind in ("pods", "services", "secrets")}

    def close(self) -> list[str]:
        """Stop everything this gateway made, each step even if an earlier one failed."""
        problems: list[str] = []

        def stop_kubelet() -> None:
            n = self.kubelet.stop()
            if n:
                problems.append(f"{n} pod processes outlived the process kubelet")

        with contextlib.ExitStack() as steps:  # run last-registered first
            if self.ns is not None:
                steps.callback(self.ns.delete)
            if self.proxy is not None:
                steps.callback(self.proxy.close)
            if self.kubelet is not None:
                steps.callback(stop_kubelet)
            steps.callback(lambda: problems.extend(self.gateways.teardown()))
            if self.gw is not None:
                steps.callback(self.gw.close)
        return problems


@pytest.fixture
def make_k8s(kube_env, gateways, tmp_path):
    made: list[K8sGateway] = []

    def make(**kwargs) -> K8sGateway:
        k = K8sGateway(kube_env, gateways, tmp_path / f"k{len(made)}")
        k.tmp.mkdir()
        made.append(k)
        return k.start(**kwargs)

    yield make
    problems = []
    for k in made:
        problems += k.close()
    assert not problems, "; ".join(problems)


def test_scheduler_and_worker_pods_compute_through_the_proxy(make_k8s):
    k = make_k8s()
    cluster = k.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 pod workers")
    client = cluster.get_client()
    assert sum(client.gather(client.map(lambda x: x + 1, range(30)))) == sum(range(1, 31))

    [scheduler] = k.pods(cluster, **SCHEDULER)
    workers = k.pods(cluster, **WORKER)
    names = {w["name"] for w in cluster.scheduler_info["workers"].values()}
    assert {p["metadata"]["labels"]["gateway.dask.org/worker"] for p in workers} == names
    uid = scheduler["metadata"]["uid"]
    mine = {"gateway.dask.org/cluster": cluster.name}
    for obj in [*workers, *k.ns.objects("services", **mine), *k.ns.objects("secrets", **mine)]:
        [owner] = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["blockOwnerDeletion"]) == ("Pod", uid, True)
    for pod in [scheduler, *workers]:
        assert pod["status"]["phase"] == "Running"
        text = json.dumps(pod["spec"])
        assert cluster.security.tls_key.strip().splitlines()[1] not in text
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        if pod is scheduler:
            assert env["DASK_GATEWAY_API_TOKEN"] == "/etc/dask-credentials/api-token"
        else:
            assert "DASK_GATEWAY_API_TOKEN" not in env
    client.close()
    cluster.shutdown()


def test_a_scheduler_pod_without_a_client_stops_its_cluster_with_the_event(make_k8s):
    # The scheduler pod reads its API token from the mounted file to ask for the stop.
    k = make_k8s(extra="c.ElasticClusterConfig.no_client_timeout = 3\n")
    cluster = k.gw.new_cluster()
    try:
        name = cluster.name
        wait_for(
            lambda: k.gw.cluster_details(name)["status"] == "STOPPED",
            timeout=60,
            what="the no-client stop",
        )
        assert k.gw.cluster_details(name)["stop_reason"] == (
            "cluster stopped: no client connected for its no_client_timeout (3 s)"
        )
    finally:
        cluster.close()


@local_only
def test_the_process_kubelet_runs_pods_like_a_kubelet(kube_env, tmp_path):
    """The test tool itself: Secret files and env, path mapping, exit status, deletion."""
    ns = TestNamespace(kube_env, tmp_path).create()
    kubelet = ProcessKubelet(kube_env, ns.name, tmp_path).start()
    api = f"/api/v1/namespaces/{ns.name}"
    try:
        secret = {
            "metadata": {"name": "creds"},
            "stringData": {"key": "s3cret", "token": "t0ken"},
        }
        kube_env.admin.request("POST", f"{api}/secrets", body=secret)
        script = 'stat -c %a "$KEYFILE"; cat "$KEYFILE"; echo; echo "$TOKEN $EXPANDED"; exit 3'
        pod = {
            "metadata": {"name": "probe"},
            "spec": {
                "automountServiceAccountToken": False,
                "restartPolicy": "Never",
                "volumes": [
                    {
                        "name": "creds",
                        "secret": {
                            "secretName": "creds",
                            "defaultMode": 0o400,
                            "items": [{"key": "key", "path": "key"}],
                        },
                    }
                ],
                "containers": [
                    {
                        "name": "c",
                        "image": "ignored",
                        "command": ["sh", "-c", script],
                        "env": [
                            {
                                "name": "POD",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                            },
                            {"name": "KEYFILE", "value": "/etc/creds/key"},
                            {
                                "name": "TOKEN",
                                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                            },
                            {"name": "EXPANDED", "value": "pod=$(POD)"},
                        ],
                        "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}],
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }
                ],
            },
        }
        kube_env.admin.request("POST", f"{api}/pods", body=pod)

        def ended():
            status = kube_env.admin.get(f"{api}/pods/probe").get("status") or {}
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_for(ended, what="the probe pod to end")
        assert status["phase"] == "Failed" and status["podIP"] == "127.0.0.1"
        [cs] = status["containerStatuses"]
        term = cs["state"]["terminated"]
        # The key file (mode 0400) through the mapped path, the token from the Secret, $(POD)
        # expanded, the log as the termination message (FallbackToLogsOnError).
        assert (term["exitCode"], term["message"]) == (3, "400\ns3cret\nt0ken pod=probe")
        assert "token" not in {p.name for p in kubelet.root.rglob("*")}  # only the listed item

        # Capacity: a pod asking for more than the node has is refused as Unschedulable.
        big = {
            "metadata": {"name": "big"},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "c",
                        "image": "ignored",
                        "command": ["sleep", "60"],
                        "resources": {"requests": {"cpu": "64"}},
                    }
                ],
            },
        }
        kube_env.admin.request("POST", f"{api}/pods", body=big)

        def unschedulable():
            conds = (kube_env.admin.get(f"{api}/pods/big").get("status") or {}).get("conditions")
            return [c for c in conds or [] if c.get("reason") == "Unschedulable"]

        [cond] = wait_for(unschedulable, what="PodScheduled=False")
        assert cond["message"] == "0/1 nodes are available: 1 Insufficient cpu."
    finally:
        killed = kubelet.stop()
        ns.delete()
    assert killed == 0, f"{killed} pod processes outlived the process kubelet"


def test_scale_down_deletes_the_pods_of_the_retired_workers(make_k8s):
    k = make_k8s()
    cluster = k.gw.new_cluster()
    cluster.scale(3)
    wait_for(lambda: workers_of(cluster) == 3, timeout=90, what="3 pod workers")
    assert len(k.worker_pod_names(cluster)) == 3
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, what="the scheduler to retire 2 workers")
    kept = {w["name"] for w in cluster.scheduler_info["workers"].values()}
    wait_for(lambda: k.worker_pod_names(cluster) == kept, what="only the kept worker's pod")
    client = cluster.get_client()
    assert client.submit(lambda: 6 * 7).result() == 42
    client.close()
    cluster.shutdown()


@local_only
def test_unschedulable_pods_are_pending_with_the_reason_and_scaled_down_first(make_k8s):
    # Room for the scheduler (1 core) and 2 one-core workers: the other 2 cannot be placed.
    k = make_k8s(cpu="3")
    cluster = k.gw.new_cluster()
    cluster.scale(4)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 running workers")
    running = {w["name"] for w in cluster.scheduler_info["workers"].values()}

    def pending_reasons():
        # Until the Kubernetes scheduler has tried a pod, its reason is that it waits for it.
        reasons = k.gw.cluster_details(cluster.name)["pools"]["pods"]["pending_reasons"]
        tried = len(reasons) == 2 and "waiting for the Kubernetes scheduler" not in reasons
        return reasons if tried else None

    reasons = wait_for(pending_reasons, what="2 pending reasons in the cluster details")
    assert reasons == ["unschedulable: 0/1 nodes are available: 1 Insufficient cpu."] * 2
    pending = [p for p in k.pods(cluster, **WORKER) if p["status"].get("phase") == "Pending"]
    assert len(pending) == 2
    for pod in pending:
        [cond] = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
        assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")

    cluster.scale(2)  # the pending pods go, the running ones stay
    wait_for(lambda: k.worker_pod_names(cluster) == running, what="the pending pods deleted")
    assert workers_of(cluster) == 2
    cluster.shutdown()


def hybrid_config(pools: dict, standin_factory, tmp_path: Path) -> str:
    """Gateway config lines for worker pools that include an HTCondor pool on the stand-in."""
    socket_path = str(standin_factory().socket_path)
    lines = [
        f"import sys; sys.path.insert(0, {str(REPO)!r})",
        "from tests.fakes.schedd.client import StandinSchedd",
        f"c.ElasticBackend.worker_pools = {pools!r}",
        f"c.HTCondorLauncher.schedd_factory = lambda: StandinSchedd({socket_path!r})",
        'c.HTCondorLauncher.worker_host = "127.0.0.1"',
        "c.HTCondorLauncher.status_period = 1",
        "c.HTCondorLauncher.schedd_timeout = 5",
        f"c.HTCondorLauncher.staging_directory = {str(tmp_path / 'staging')!r}",
        f"c.HTCondorLauncher.environment = {{'PATH': {BINDIR + ':/usr/bin:/bin'!r}}}",
    ]
    return "\n".join(lines) + "\n"


def test_hybrid_cluster_spills_from_capped_pods_to_jobs_computes_and_scales_to_nothing(
    make_k8s, tmp_path
):
    """scale(8) with a pod cap of 2: 2 pods + 6 HTCondor jobs, one computation over both."""
    from tests.fakes.schedd import start_standin

    with start_standin(tmp_path / "condor", slots=8, tick=0.5) as (factory, control):
        pools = {
            "pods": {"launcher": "kubernetes", "max_workers": 2},
            "condor": {"launcher": "htcondor"},
        }
        k = make_k8s(extra=hybrid_config(pools, factory, tmp_path))
        cluster = k.gw.new_cluster()
        cluster.scale(8)

        def spread():
            pools = k.gw.cluster_details(cluster.name)["pools"]
            return {name: p["running"] for name, p in pools.items()} == {"pods": 2, "condor": 6}

        wait_for(spread, timeout=180, what="2 pod workers and 6 job workers")
        wait_for(lambda: workers_of(cluster) == 8, timeout=60, what="8 workers joined")
        assert len(k.worker_pod_names(cluster)) == 2
        assert len(control.jobs(include_history=False)) == 6

        client = cluster.get_client()
        futures = client.map(lambda x: x + 1, range(400), pure=False)
        assert sum(client.gather(futures)) == sum(range(1, 401))
        ran_on = {w for ws in client.who_has(futures).values() for w in ws}
        names = {cluster.scheduler_info["workers"][a]["name"] for a in ran_on}
        pods = k.worker_pod_names(cluster)
        assert names & pods, "some work ran on pod workers"
        assert names - pods, "some work ran on HTCondor job workers"
        client.close()

        cluster.scale(0)
        wait_for(
            lambda: not control.jobs(include_history=False) and not k.worker_pod_names(cluster),
            timeout=60,
            what="no job and no worker pod",
        )
        cluster.shutdown()
        k.gw.close()
        k.gateway.stop()


@local_only  # needs a node too small for the pods: the process kubelet's capacity
def test_placement_moves_unschedulable_workers_to_htcondor_with_the_reason(make_k8s, tmp_path):
    """A hybrid cluster: the pod that does not fit bursts to an HTCondor pool (stand-in)."""
    from tests.fakes.schedd import start_standin

    with start_standin(tmp_path / "condor", slots=2, tick=0.5) as (factory, control):
        pools = {
            "pods": {"launcher": "kubernetes", "burst_after": 3},
            "condor": {"launcher": "htcondor"},
        }
        extra = hybrid_config(pools, factory, tmp_path)
        k = make_k8s(cpu="2", extra=extra)  # room for the scheduler and one worker pod
        cluster = k.gw.new_cluster()
        cluster.scale(2)

        def one_running_in_each_pool():
            details = k.gw.cluster_details(cluster.name)
            running = [details["pools"][p]["running"] for p in ("pods", "condor")]
            return details if running == [1, 1] else None

        details = wait_for(one_running_in_each_pool, timeout=90, what="a pod and a job worker")
        assert workers_of(cluster) == 2
        moved = [e["message"] for e in details["events"] if "moved to pool condor" in e["message"]]
        assert len(moved) == 1, details["events"]
        assert "(unschedulable: 0/1 nodes are available: 1 Insufficient cpu.)" in moved[0]
        assert len(k.worker_pod_names(cluster)) == 1
        client = cluster.get_client()
        assert sum(client.gather(client.map(lambda x: 2 * x, range(10)))) == 90
        client.close()
        cluster.shutdown()
        wait_for(
            lambda: not control.jobs(include_history=False) and not k.pods(cluster),
            what="no job, no pod",
        )
        k.gw.close()
        k.gateway.stop()


def test_stop_leaves_nothing_and_deleting_the_scheduler_pod_collects_the_cluster(make_k8s):
    k = make_k8s()
    first = k.gw.new_cluster()
    second = k.gw.new_cluster(shutdown_on_close=False)
    first.scale(2)
    second.scale(2)
    wait_for(lambda: workers_of(first) == 2 and workers_of(second) == 2, timeout=90)
    assert all(len(names) for names in k.everything(first).values())

    first.shutdown()
    empty = {"pods": set(), "services": set(), "secrets": set()}
    wait_for(lambda: k.everything(first) == empty, what="no pod, service or secret left")

    # With the gateway gone, only the garbage collector can clean up: delete the scheduler pod
    # and the controller manager removes its Service, Secret and worker pods.
    second.close()
    k.gw.close()
    k.gateway.kill()
    k.gw = None
    owned = k.everything(second)
    assert len(owned["pods"]) == 3 and owned["services"] and owned["secrets"]
    [scheduler] = k.pods(second, **SCHEDULER)
    k.ns.admin.request(
        "DELETE", f"/api/v1/namespaces/{k.ns.name}/pods/{scheduler['metadata']['name']}"
    )
    wait_for(lambda: k.everything(second) == empty, timeout=60, what="garbage collection")


@local_only
def test_the_watch_resumes_after_a_cut_and_relists_after_410(make_k8s):
    k = make_k8s(via_proxy=True)
    cluster = k.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 pod worker")
    log = k.gateway.log_path

    def stray(name: str) -> dict:
        labels = {
            "app.kubernetes.io/managed-by": "elastic-gateway",
            "app.kubernetes.io/component": "dask-worker",
            "gateway.dask.org/instance": k.gateway_id,
            "gateway.dask.org/cluster": cluster.name,
            "gateway.dask.org/worker": name,
        }
        pod = {
            "metadata": {"name": f"stray-{name}", "labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "none", "command": ["sleep", "300"]}],
            },
        }
        k.ns.admin.request("POST", f"/api/v1/namespaces/{k.ns.name}/pods", body=pod)
        return pod

    # 1. Cut every connection and refuse new ones; a pod appears meanwhile. The watch resumes
    #    from its resourceVersion (no re-list) and the ADDED event reaches the cache: the pod,
    #    which has no record, is deleted.
    def log_since(offset: int) -> str:
        return log.read_text()[offset:]

    start = len(log.read_text())
    assert k.proxy.cut(refuse=True) >= 1
    stray("one")
    time.sleep(3)
    assert "stray-one" in k.ns.names("pods")
    k.proxy.allow()
    wait_for(lambda: "stray-one" not in k.ns.names("pods"), what="stray-one deleted")
    text = log_since(start)
    assert "Pod watch resumed from resourceVersion" in text
    assert "Pod cache listed" not in text and "re-listing" not in text

    # 2. Cut again; while away, etcd is compacted past the watch's resourceVersion: the API
    #    server answers 410 Gone, the launcher re-lists and finds (and deletes) the new pod.
    start = len(log.read_text())
    k.proxy.cut(refuse=True)
    stray("two")
    time.sleep(1)
    k.env.compact_etcd()
    k.proxy.allow()
    wait_for(lambda: "stray-two" not in k.ns.names("pods"), what="stray-two deleted")
    text = log_since(start)
    assert "is gone (410" in text and "re-listing" in text
    assert text.count("Pod cache listed") == 1
    # The cluster noticed nothing.
    assert k.gw.cluster_details(cluster.name)["status"] == "RUNNING"
    client = cluster.get_client()
    assert client.submit(lambda: 1 + 1).result() == 2
    client.close()
    cluster.shutdown()


def test_restart_reconciles_pods_and_records(make_k8s):
    k = make_k8s()
    cluster = k.gw.new_cluster(shutdown_on_close=False)
    doomed = k.gw.new_cluster(shutdown_on_close=False)
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 pod workers")
    wait_for(lambda: k.pods(doomed, **SCHEDULER), what="the second scheduler pod")
    name, doomed_name = cluster.name, doomed.name
    cluster.close()
    doomed.close()
    k.gw.close()
    k.gateway.kill()

    # While the gateway is down: a pod with no record (in its name), a worker record whose pod
    # is deleted, and a cluster whose scheduler pod is deleted.
    labels = {
        "app.kubernetes.io/managed-by": "elastic-gateway",
        "app.kubernetes.io/component": "dask-worker",
        "gateway.dask.org/instance": k.gateway_id,
        "gateway.dask.org/cluster": name,
        "gateway.dask.org/worker": "not-a-worker",
    }
    stray = {
        "metadata": {"name": "stray-worker", "labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "none", "command": ["sleep", "300"]}],
        },
    }
    pods = f"/api/v1/namespaces/{k.ns.name}/pods"
    [victim, survivor] = sorted(k.worker_pod_names(cluster))
    k.ns.admin.request("POST", pods, body=stray)
    k.ns.admin.request("DELETE", f"{pods}/dask-worker-{victim}", body={"gracePeriodSeconds": 0})
    k.ns.admin.request("DELETE", f"{pods}/dask-scheduler-{doomed_name}")

    k.gateway.start()
    k.gw = k.gateways.client(k.gateway)
    cluster = k.gw.connect(name)
    wait_for(lambda: "stray-worker" not in k.ns.names("pods"), what="the stray pod deleted")
    wait_for(
        lambda: workers_of(cluster) == 2 and victim not in k.worker_pod_names(cluster),
        timeout=90,
        what="a replacement for the worker whose pod was gone",
    )
    assert survivor in k.worker_pod_names(cluster)
    events = " ".join(e["message"] for e in k.gw.cluster_details(name)["events"])
    assert f"worker {victim} was gone after a gateway restart" in events
    details = k.gw.cluster_details(doomed_name)
    assert details["status"] == "FAILED"
    assert details["failure_reason"].startswith(
        "the scheduler was gone when the gateway restarted: "
    )
    assert "was deleted" in details["failure_reason"]  # the launcher's reason, for the owner
    cluster.shutdown()


def test_the_shipped_rbac_grants_the_gateway_exactly_the_permissions_it_uses(kube_env, tmp_path):
    # Every other test runs its gateway under this same ServiceAccount (deploy/rbac.yaml).
    ns = TestNamespace(kube_env, tmp_path).create()
    try:
        as_gateway = SyncKube(ns.gateway_kubeconfig())
        try:
            _, review = as_gateway.request(
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                body={"spec": {"namespace": ns.name}},
            )
            granted = set()
            for rule in review["status"]["resourceRules"]:
                if rule.get("apiGroups") == [""]:
                    granted |= {(r, v) for r in rule["resources"] for v in rule["verbs"]}
            wanted = {(r, v) for r, verbs in REQUIRED_PERMISSIONS.items() for v in verbs}
            if kube_env.local:
                assert granted == wanted
            else:  # a real cluster may grant every account more (its own cluster roles)
                assert wanted <= granted
            status, _ = as_gateway.request(
                "GET", f"/api/v1/namespaces/{ns.name}/secrets", ok=(403,)
            )
            assert status == 403  # it can create Secrets, never read them
        finally:
            as_gateway.close()
    finally:
        ns.delete()


def test_a_missing_permission_fails_with_a_message_naming_it(make_k8s):
    k = make_k8s(drop=("services", "create"))
    name = k.gw.submit()

    def failed():
        details = k.gw.cluster_details(name)
        return details if details["status"] == "FAILED" else None

    details = wait_for(failed, timeout=60, what="the cluster to fail")
    assert "permission to create services" in details["failure_reason"]
    log = k.gateway.log_path.read_text()
    assert (
        f"Kubernetes refused the gateway permission to create services in namespace "
        f"'{k.ns.name}'" in log
    )
    assert "deploy/rbac.yaml" in log
    wait_for(lambda: k.ns.names("pods") == set(), what="the scheduler pod removed")


def test_an_emptied_database_is_refused_and_leaves_the_pods_of_running_clusters(make_k8s):
    """Before: the gateway started on the empty file and deleted every pod as unknown."""
    k = make_k8s()
    cluster = k.gw.new_cluster(shutdown_on_close=False)
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="a pod worker")
    name = cluster.name
    pods = {p["metadata"]["name"] for p in k.pods(cluster)}
    cluster.close()
    k.gw.close()
    k.gateway.kill()
    state = k.gateway.state_dir
    saved = {f.name: f.read_bytes() for f in state.glob("gateway.sqlite*")}
    (state / "gateway.sqlite").write_bytes(b"")  # a restore gone wrong
    for extra in state.glob("gateway.sqlite-*"):
        extra.unlink()

    with pytest.raises(RuntimeError, match="gateway exited"):
        k.gateway.start(timeout=60)
    log = k.gateway.log_tail(200)
    assert "has no cluster record, but this gateway's launchers still run things" in log
    assert re.search(r"\(\d+ kubernetes:", log)  # the scheduler's pod and the worker's
    assert {p["metadata"]["name"] for p in k.pods()} == pods

    for file_name, data in saved.items():  # the recovery: put the copy back
        (state / file_name).write_bytes(data)
    k.gateway.start()
    k.gw = k.gateways.client(k.gateway)
    cluster = k.gw.connect(name)
    wait_for(lambda: workers_of(cluster) == 1, timeout=60, what="the adopted worker")
    cluster.shutdown()


# Last: after an outage the controller manager needs a while to catch up (new namespaces
# get their default ServiceAccount late), which would slow any test after this one.
@local_only
def test_a_30s_api_server_outage_is_survived(make_k8s):
    k = make_k8s()
    cluster = k.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 pod worker")
    before = k.worker_pod_names(cluster)
    outage = threading.Thread(target=k.env.cp.apiserver_outage, args=(30,))
    outage.start()
    try:
        time.sleep(1)
        assert not k.env.cp.is_ready()
        cluster.scale(3)  # requested during the outage
        time.sleep(10)
        details = k.gw.cluster_details(cluster.name)
        assert details["status"] == "RUNNING" and workers_of(cluster) == 1
    finally:
        outage.join()
    wait_for(lambda: workers_of(cluster) == 3, timeout=120, what="recovery to 3 workers")
    client = cluster.get_client()
    assert client.submit(lambda: 7 * 6).result() == 42
    client.close()
    assert before <= k.worker_pod_names(cluster)  # the worker from before was never replaced
    details = k.gw.cluster_details(cluster.name)
    assert details["status"] == "RUNNING" and details["failure_reason"] is None
    messages = [e["message"] for e in details["events"]]
    assert any(m.startswith("pool pods is unavailable") for m in messages), messages
    cluster.shutdown()
    # Explicit deletions, not garbage collection (which may lag after an outage).
    empty = {"pods": set(), "services": set(), "secrets": set()}
    wait_for(lambda: k.everything(cluster) == empty, timeout=60, what="nothing left")


@local_only
def test_a_node_crash_fails_its_running_cluster_at_once_not_at_the_heartbeat_timeout(make_k8s):
    """The process kubelet and its containers die (a node crash) and it restarts: it reports
    the pods Failed, never runs them again, and the gateway fails the cluster from that."""
    k = make_k8s(extra="c.ElasticBackend.cluster_heartbeat_timeout = 600\n")
    cluster = k.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 pod worker")
    k.kubelet.kill()
    # The containers die with it; a Nanny's worker process notices its Nanny gone a bit later.
    wait_for(lambda: k.kubelet.processes() == [], timeout=15, what="the pod processes gone")
    logged = k.kubelet.log_path.stat().st_size
    k.kubelet.start()
    t0 = time.monotonic()
    details = wait_for(
        lambda: (d := k.gw.cluster_details(cluster.name))["status"] == "FAILED" and d,
        timeout=30,
        what="the cluster failed",
    )
    assert time.monotonic() - t0 < 30  # not the 600 s heartbeat timeout
    assert details["failure_reason"].startswith("the scheduler stopped: pod failed: ")
    assert "ContainerStatusUnknown, exit code 137" in details["failure_reason"]
    with open(k.kubelet.log_path, "rb") as log:  # what the restarted kubelet did
        log.seek(logged)
        assert b"started dask-scheduler" not in log.read()  # the pod did not run again
    wait_for(lambda: not k.pods(cluster), timeout=60, what="the cluster's pods deleted")


def test_a_profiles_image_runs_scheduler_and_worker_pods(make_k8s):
    """The profile's image, not the launcher's, is in both pod specs on the API server."""
    image = os.environ.get("ELASTIC_GATEWAY_TEST_IMAGE") or "registry.example.org/coffea:2025.1"
    k = make_k8s(
        extra=f'c.ElasticBackend.profiles = {{"base": {{}}, "coffea": {{"image": {image!r}}}}}\n'
    )
    cluster = k.gw.new_cluster(profile="coffea")
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="a pod worker")
    pods = [*k.pods(cluster, **SCHEDULER), *k.pods(cluster, **WORKER)]
    assert len(pods) == 2
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {image}
    assert k.gw.cluster_details(cluster.name)["environment"] == f"image {image}"
    cluster.shutdown()
    base = k.gw.new_cluster(profile="base")
    [scheduler] = k.pods(base, **SCHEDULER)
    assert scheduler["spec"]["containers"][0]["image"] != image  # the launcher's own
    base.shutdown()


def test_forwarded_credentials_reach_pod_workers_but_no_pod_spec_or_secret(make_k8s):
    k = make_k8s()
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IiLCJleHAiOjQxMDI0NDQ4MDB9.c2lnbmF0dXJl"
    cluster = k.gw.new_cluster(forward_credentials=False)
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="a pod worker")
    cluster.forward_credentials(token=token, discover=False)
    client = cluster.get_client()
    [seen] = client.run(lambda: open(os.environ["BEARER_TOKEN_FILE"]).read()).values()
    assert seen == token
    mine = {"gateway.dask.org/cluster": cluster.name}
    objects = [*k.pods(cluster), *k.ns.objects("secrets", **mine)]
    text = json.dumps(objects)
    assert objects and token not in text
    assert base64.b64encode(token.encode()).decode()[:40] not in text  # nor in Secret data
    client.close()
    cluster.shutdown()
