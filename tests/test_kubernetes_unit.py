"""Unit tests of the Kubernetes launcher: manifests, pod status, the watch cache, API errors."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dask_gateway_server.utils import FrozenAttrDict
from traitlets import TraitError

from gateway_backend.cluster_config import ElasticClusterConfig
from gateway_backend.events import EventLog
from gateway_backend.launchers.base import LauncherUnavailable, WorkerPhase
from gateway_backend.launchers.htcondor import HTCondorLauncher
from gateway_backend.launchers.kubernetes import (
    REQUIRED_PERMISSIONS,
    KubernetesAPIError,
    KubernetesForbidden,
    KubernetesLauncher,
    PodCache,
    check_pod,
    cpu_quantity,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "very-secret-api-token-0123456789"
KEY = b"-----BEGIN PRIVATE KEY-----\nS3CR3TKEYMATERIAL\n-----END PRIVATE KEY-----\n"
LOG = logging.getLogger("test")


def make_cluster(**config) -> SimpleNamespace:
    base = ElasticClusterConfig().to_dict()
    base.update(config)
    return SimpleNamespace(
        name="c0ffee",
        username="alice",
        token=TOKEN,
        tls_cert=b"-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----\n",
        tls_key=KEY,
        config=FrozenAttrDict(base),
        state={"uid": "uid-of-scheduler-pod"},
        scheduler_address="tls://10.1.2.3:8786",
    )


def make_launcher(**traits) -> KubernetesLauncher:
    launcher = KubernetesLauncher(gateway_id="gw-test", **traits)
    launcher.namespace = traits.get("namespace", "analysis")
    launcher.backend = SimpleNamespace(
        cluster_heartbeat_period=7, api_url="http://gateway.example:8000/api", events=EventLog()
    )
    return launcher


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


# -- manifests ---------------------------------------------------------------------------------
def test_scheduler_pod_reads_token_and_tls_from_the_mounted_secret():
    pod = make_launcher().scheduler_pod(make_cluster())
    text = json.dumps(pod)
    assert TOKEN not in text and "S3CR3TKEYMATERIAL" not in text
    env = env_of(pod)
    assert env["DASK_GATEWAY_API_TOKEN"] == "/etc/dask-credentials/api-token"  # a path
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT"] == "/etc/dask-credentials/dask.crt"
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"] == "/etc/dask-credentials/dask.pem"
    assert env["DASK_GATEWAY_API_URL"] == "http://gateway.example:8000/api"
    assert env["DASK_GATEWAY_CLUSTER_NAME"] == "c0ffee"
    [volume] = pod["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "dask-credentials-c0ffee"
    assert [i["key"] for i in volume["secret"]["items"]] == ["dask.crt", "dask.pem", "api-token"]
    [mount] = pod["spec"]["containers"][0]["volumeMounts"]
    assert mount == {
        "name": "dask-credentials",
        "mountPath": "/etc/dask-credentials",
        "readOnly": True,
    }


def test_scheduler_pod_command_ports_labels_and_defaults():
    pod = make_launcher().scheduler_pod(make_cluster(scheduler_cores=2, scheduler_memory=2**31))
    c = pod["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[:2] == ["dask", "scheduler"]
    assert cmd[cmd.index("--port") + 1] == "8786"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--dashboard-address") + 1] == "0.0.0.0:8787"
    assert cmd[cmd.index("--dg-api-address") + 1] == "0.0.0.0:8788"
    assert cmd[cmd.index("--dg-heartbeat-period") + 1] == "7"
    assert [p["containerPort"] for p in c["ports"]] == [8786, 8787, 8788]
    assert c["resources"] == {
        "requests": {"cpu": "2", "memory": str(2**31)},
        "limits": {"cpu": "2", "memory": str(2**31)},
    }
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    meta = pod["metadata"]
    assert meta["name"] == "dask-scheduler-c0ffee" and meta["namespace"] == "analysis"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "elastic-gateway",
        "app.kubernetes.io/component": "dask-scheduler",
        "gateway.dask.org/instance": "gw-test",
        "gateway.dask.org/cluster": "c0ffee",
    }
    assert meta["annotations"] == {"gateway.dask.org/user": "alice"}
    assert "ownerReferences" not in meta  # the scheduler pod owns the rest
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["terminationGracePeriodSeconds"] == 30


def test_ports_zero_listen_anywhere_and_declare_no_container_ports():
    launcher = make_launcher(scheduler_port=0, dashboard_port=0, api_port=0)
    cluster = make_cluster()
    c = launcher.scheduler_pod(cluster)["spec"]["containers"][0]
    assert c["command"][c["command"].index("--port") + 1] == "0"
    assert "ports" not in c
    service = launcher.scheduler_service(cluster, "uid-1")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (8786, 8786),
        (8787, 8787),
        (8788, 8788),
    ]


def test_pod_template_overrides_apply_to_scheduler_and_workers():
    launcher = make_launcher(
        image="registry.example/dask:1",
        image_pull_secrets=["regcred"],
        service_account="dask-runner",
        node_selector={"pool": "analysis"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "dask"}],
        volumes=[{"name": "cvmfs", "hostPath": {"path": "/cvmfs"}}],
        volume_mounts=[{"name": "cvmfs", "mountPath": "/cvmfs", "readOnly": True}],
        extra_labels={"team": "cms", "gateway.dask.org/cluster": "spoofed"},
        extra_annotations={"owner": "facility"},
        environment={"X509_CERT_DIR": "/cvmfs/grid.cern.ch/etc/grid-security/certificates"},
        worker_extra_pod_config={"priorityClassName": "opportunistic"},
        scheduler_extra_container_config={"securityContext": {"runAsNonRoot": True}},
    )
    cluster = make_cluster()
    for pod in (launcher.scheduler_pod(cluster), launcher.worker_pod(cluster, "w1")):
        spec, c = pod["spec"], pod["spec"]["containers"][0]
        assert c["image"] == "registry.example/dask:1"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert spec["serviceAccountName"] == "dask-runner"
        assert spec["nodeSelector"] == {"pool": "analysis"}
        assert spec["tolerations"][0]["key"] == "dedicated"
        assert [v["name"] for v in spec["volumes"]] == ["dask-credentials", "cvmfs"]
        assert [m["mountPath"] for m in c["volumeMounts"]] == ["/etc/dask-credentials", "/cvmfs"]
        assert pod["metadata"]["labels"]["team"] == "cms"
        assert pod["metadata"]["labels"]["gateway.dask.org/cluster"] == "c0ffee"  # ours win
        assert pod["metadata"]["annotations"]["owner"] == "facility"
        assert env_of(pod)["X509_CERT_DIR"].startswith("/cvmfs/")
    worker = launcher.worker_pod(cluster, "w1")
    assert worker["spec"]["priorityClassName"] == "opportunistic"
    assert launcher.scheduler_pod(cluster)["spec"].get("priorityClassName") is None
    sched_c = launcher.scheduler_pod(cluster)["spec"]["containers"][0]
    assert sched_c["securityContext"] == {"runAsNonRoot": True}
    assert "securityContext" not in worker["spec"]["containers"][0]


def test_worker_pod_is_owned_by_the_scheduler_and_never_sees_the_token():
    launcher = make_launcher(nanny=False, worker_extra_args=["--lifetime", "1h"])
    pod = launcher.worker_pod(make_cluster(worker_cores=1.5, worker_memory=3 * 2**30), "w1")
    text = json.dumps(pod)
    assert TOKEN not in text and "api-token" not in text and "S3CR3TKEYMATERIAL" not in text
    assert "DASK_GATEWAY_API_TOKEN" not in text
    meta = pod["metadata"]
    assert meta["name"] == "dask-worker-w1"
    assert meta["labels"]["gateway.dask.org/worker"] == "w1"
    assert meta["labels"]["app.kubernetes.io/component"] == "dask-worker"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "dask-scheduler-c0ffee",
            "uid": "uid-of-scheduler-pod",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    c = pod["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[:3] == ["dask", "worker", "tls://10.1.2.3:8786"]
    assert cmd[cmd.index("--name") + 1] == "w1"
    assert cmd[-3:] == ["--no-nanny", "--lifetime", "1h"]
    env = env_of(pod)
    assert env["DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"] == "/etc/dask-credentials/dask.pem"
    assert c["resources"]["requests"] == {"cpu": "1500m", "memory": str(3 * 2**30)}
    [volume] = pod["spec"]["volumes"]
    assert [i["key"] for i in volume["secret"]["items"]] == ["dask.crt", "dask.pem"]


def test_worker_gpus_request_the_gpu_resource_and_cpu_limits_can_be_off():
    launcher = make_launcher(cpu_limits=False)
    res = launcher.worker_pod(make_cluster(worker_gpus=2), "w")["spec"]["containers"][0]
    assert res["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert res["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "cpu" not in res["resources"]["limits"]
    plain = launcher.worker_pod(make_cluster(), "w")["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in plain["requests"]


def test_secret_holds_cert_key_and_token_and_is_owned_by_the_scheduler():
    cluster = make_cluster()
    secret = make_launcher().credentials_secret(cluster, "uid-9")
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data == {"dask.crt": cluster.tls_cert, "dask.pem": KEY, "api-token": TOKEN.encode()}
    assert secret["metadata"]["name"] == "dask-credentials-c0ffee"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    assert secret["metadata"]["labels"]["gateway.dask.org/cluster"] == "c0ffee"


def test_service_selects_the_scheduler_pod_and_is_owned_by_it():
    launcher = make_launcher()
    cluster = make_cluster()
    service = launcher.scheduler_service(cluster, "uid-9")
    assert service["metadata"]["name"] == "dask-c0ffee"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    pod_labels = launcher.scheduler_pod(cluster)["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("tcp-comm", 8786),
        ("http-dashboard", 8787),
        ("http-api", 8788),
    ]


def test_cpu_quantities_are_whole_cores_or_millicores():
    assert cpu_quantity(1) == "1" and cpu_quantity(2.0) == "2" and cpu_quantity(0.25) == "250m"


def test_the_default_gateway_id_survives_a_restart_on_another_host(monkeypatch):
    # A Deployment's pod gets a new host name on every restart; the id must not follow it.
    ids = []
    for host in ("gateway-7d9f-abcde", "gateway-7d9f-vwxyz"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        ids.append((KubernetesLauncher().gateway_id, HTCondorLauncher().gateway_id))
    assert ids[0] == ids[1]


def test_an_unknown_image_pull_policy_is_refused():
    with pytest.raises(TraitError, match="image_pull_policy"):
        KubernetesLauncher(image_pull_policy="Sometimes")


@pytest.mark.parametrize("bad", ["", "-x", "x" * 64, "a b"])
def test_gateway_id_must_be_a_label_value(bad):
    with pytest.raises(Exception, match="not a valid label value"):
        KubernetesLauncher(gateway_id=bad)


def test_rbac_yaml_grants_exactly_what_the_launcher_uses():
    docs = list(yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs if d}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    granted: dict[str, set[str]] = {}
    for rule in kinds["Role"]["rules"]:
        assert rule["apiGroups"] == [""]
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted == {r: set(v) for r, v in REQUIRED_PERMISSIONS.items()}
    binding = kinds["RoleBinding"]
    assert binding["roleRef"]["name"] == kinds["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == kinds["ServiceAccount"]["metadata"]["name"]


# -- pod status --------------------------------------------------------------------------------
def pod(phase="Pending", conditions=(), statuses=(), node=None, deleting=False, **status):
    return {
        "metadata": {"name": "p", "deletionTimestamp": "now" if deleting else None},
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "conditions": list(conditions),
            "containerStatuses": list(statuses),
            **status,
        },
    }


def test_check_pod_running_and_ready():
    ready = {"type": "Ready", "status": "True"}
    assert check_pod(pod("Running", [ready], node="n")).phase == WorkerPhase.RUNNING
    assert check_pod(pod("Running", [], node="n")).phase == WorkerPhase.PENDING


def test_check_pod_unschedulable_is_pending_with_the_schedulers_message():
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
    }
    check = check_pod(pod("Pending", [cond]))
    assert check.phase == WorkerPhase.PENDING
    assert check.reason == "unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    assert check_pod(pod()).reason == "waiting for the Kubernetes scheduler"


def test_check_pod_failed_gives_the_termination_reason():
    term = {"terminated": {"reason": "OOMKilled", "exitCode": 137, "message": "last log line"}}
    check = check_pod(pod("Failed", statuses=[{"name": "dask-worker", "state": term}]))
    assert check.phase == WorkerPhase.FAILED
    assert "container dask-worker OOMKilled (exit code 137): last log line" in check.reason
    evicted = check_pod(pod("Failed", reason="Evicted", message="node low on memory"))
    assert "Evicted node low on memory" in evicted.reason


def test_check_pod_permanent_waiting_reasons_fail_transient_ones_wait():
    bad = {"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}
    assert check_pod(pod(statuses=[{"name": "c", "state": bad}], node="n")).phase == (
        WorkerPhase.FAILED
    )
    pulling = {"waiting": {"reason": "ImagePullBackOff", "message": "retrying"}}
    check = check_pod(pod(statuses=[{"name": "c", "state": pulling}], node="n"))
    assert check.phase == WorkerPhase.PENDING and "ImagePullBackOff" in check.reason
    assert check_pod(pod("Running", node="n", deleting=True)).phase == WorkerPhase.FAILED


# -- the watch cache ---------------------------------------------------------------------------
def obj(name: str, rv: int, **labels) -> dict:
    return {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels}}


class FakeAPI:
    """Scripted list and watch answers for PodCache."""

    def __init__(self, lists, watches):
        self.lists = list(lists)
        self.watches = list(watches)
        self.watch_rvs: list[str] = []

    async def list_pods(self):
        item = self.lists.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def open_watch(self, rv):
        self.watch_rvs.append(rv)
        if not self.watches:
            await asyncio.sleep(3600)
        item = self.watches.pop(0)
        if isinstance(item, BaseException):
            raise item

        async def events():
            for ev in item:
                if isinstance(ev, BaseException):
                    raise ev
                yield ev

        return events()


async def run_cache(api: FakeAPI, until, seconds: float = 5, **backoff) -> PodCache:
    backoff = {"backoff_min": 0.01, "backoff_max": 0.02, **backoff}
    cache = PodCache(api.list_pods, api.open_watch, LOG, **backoff)
    task = asyncio.ensure_future(cache.run())
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while not until(cache):
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return cache


async def test_cache_lists_then_watches_from_the_lists_resource_version():
    api = FakeAPI(
        [{"metadata": {"resourceVersion": "10"}, "items": [obj("a", 5)]}],
        [[{"type": "ADDED", "object": obj("b", 11)}, {"type": "DELETED", "object": obj("a", 12)}]],
    )
    cache = await run_cache(api, lambda c: "b" in c.pods and "a" not in c.pods)
    assert api.watch_rvs[0] == "10"
    assert cache.resource_version == "12"
    assert cache.has_seen("11", 0) and cache.has_seen("12", 0) and not cache.has_seen("13", 0)


async def test_cache_resumes_from_its_resource_version_after_a_cut_without_relisting():
    cut = ConnectionResetError("connection cut")
    api = FakeAPI(
        [{"metadata": {"resourceVersion": "10"}, "items": []}],
        [
            [{"type": "ADDED", "object": obj("a", 11)}, cut],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}],
            [{"type": "ADDED", "object": obj("b", 21)}],
        ],
    )
    cache = await run_cache(api, lambda c: "b" in c.pods)
    assert api.watch_rvs[:3] == ["10", "11", "20"]
    assert cache.lists == 1 and set(cache.pods) == {"a", "b"}


async def test_a_410_forces_a_relist_that_replaces_the_cache():
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    api = FakeAPI(
        [
            {"metadata": {"resourceVersion": "10"}, "items": [obj("a", 5)]},
            {"metadata": {"resourceVersion": "50"}, "items": [obj("b", 40)]},
        ],
        [[gone]],
    )
    cache = await run_cache(api, lambda c: c.lists == 2)
    assert set(cache.pods) == {"b"} and cache.resource_version == "50"
    assert api.watch_rvs == ["10", "50"]


async def test_errors_disconnect_the_cache_and_back_off_until_the_api_answers():
    down = LauncherUnavailable("connection refused")
    # The first watch breaks mid-stream, two re-opens are refused, the fourth works.
    api = FakeAPI([{"metadata": {"resourceVersion": "7"}, "items": []}], [[down], down, down, []])
    opened = []  # (time, connected, error) each time a watch is opened
    open_watch = api.open_watch

    async def recording_open_watch(rv):
        opened.append((time.monotonic(), cache.connected, cache.error))
        return await open_watch(rv)

    api.open_watch = recording_open_watch
    cache = None

    def done(c):
        nonlocal cache
        cache = c
        return len(opened) >= 5 and c.connected

    await run_cache(api, done, backoff_min=0.05, backoff_max=1.0)
    for _, connected, error in opened[1:4]:
        assert not connected and "connection refused" in error
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(opened[1:5])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # the pause doubles: 0.05, 0.1, 0.2 s
    assert api.watch_rvs == ["7"] * 5 and cache.lists == 1  # resumed, never re-listed
    assert cache.connected and cache.error == ""


# -- status checks from the cache --------------------------------------------------------------
def worker(name: str, **state) -> SimpleNamespace:
    return SimpleNamespace(name=name, state=state)


async def test_check_workers_from_the_cache_only():
    launcher = make_launcher()
    api = FakeAPI([], [])
    launcher.cache = PodCache(api.list_pods, api.open_watch, LOG)
    running = obj("dask-worker-a", 5)
    running["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    launcher.cache.pods = {"dask-worker-a": running}
    launcher.cache.resource_version = "20"
    launcher.cache.connected = True
    checks = await launcher.check_workers(
        [
            worker("a", pod="dask-worker-a", created_rv="5"),
            worker("b", pod="dask-worker-b", created_rv="15"),  # deleted since
            worker("c", pod="dask-worker-c", created_rv="25"),  # the watch has not shown it yet
            worker("d"),
        ]
    )
    assert [c.phase for c in checks] == [
        WorkerPhase.RUNNING,
        WorkerPhase.FAILED,
        WorkerPhase.PENDING,
        WorkerPhase.PENDING,
    ]
    assert checks[1].reason == "pod dask-worker-b was deleted"
    # While the watch is down nothing is declared gone: "never lose a cluster".
    launcher.cache.connected, launcher.cache.error = False, "ClientConnectorError"
    checks = await launcher.check_workers([worker("b", pod="dask-worker-b", created_rv="15")])
    assert checks[0].phase == WorkerPhase.PENDING
    assert "Kubernetes API unreachable (ClientConnectorError)" in checks[0].reason
    clusters = [SimpleNamespace(name="x", state={"pod": "gone", "created_rv": "1"})]
    assert await launcher.check_schedulers(clusters) == [True]
    launcher.cache.connected = True
    assert await launcher.check_schedulers(clusters) == [False]


async def test_strays_are_pods_without_an_active_record():
    launcher = make_launcher()
    api = FakeAPI([], [])
    launcher.cache = PodCache(api.list_pods, api.open_watch, LOG)
    launcher._deleting = set()
    label = "gateway.dask.org/"
    launcher.cache.pods = {
        "s-known": {"metadata": {"labels": {f"{label}cluster": "k"}}},
        "w-known": {"metadata": {"labels": {f"{label}cluster": "k", f"{label}worker": "w1"}}},
        "s-stray": {"metadata": {"labels": {f"{label}cluster": "u"}}},
    }
    for name in ("w-known", "w-stray"):
        launcher.cache.pods[name] = {
            "metadata": {
                "labels": {
                    f"{label}cluster": "k",
                    f"{label}worker": name.split("-")[1],
                    "app.kubernetes.io/component": "dask-worker",
                }
            }
        }
    deleted = []

    async def fake_delete(resource, name, **kw):
        deleted.append((resource, name))
        return True

    launcher._delete = fake_delete
    assert await launcher._remove_strays({"k"}, {"known"}) == 2
    assert sorted(deleted) == [("pods", "s-stray"), ("pods", "w-stray")]


# -- API calls: retries, 403, time-outs -----------------------------------------------------------
class FakeResponse:
    def __init__(self, status: int, body: dict):
        self.status = status
        self._body = json.dumps(body).encode()

    async def read(self):
        return self._body

    def release(self):
        pass


def scripted(*answers):
    calls = []

    async def method(*args, **kwargs):
        calls.append(kwargs)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    method.calls = calls
    return method


async def test_5xx_and_timeouts_are_retried_then_succeed():
    launcher = make_launcher(api_retry_timeout=5)
    method = scripted(
        FakeResponse(503, {"message": "etcd leader changed"}),
        TimeoutError(),
        FakeResponse(201, {"metadata": {"uid": "u"}}),
    )
    body = await launcher._call("create", "pods", method, "ns", {})
    assert body == {"metadata": {"uid": "u"}} and len(method.calls) == 3
    assert method.calls[0]["_request_timeout"] == launcher.request_timeout


async def test_persistent_outage_becomes_launcher_unavailable():
    launcher = make_launcher(api_retry_timeout=0.3)
    method = scripted(ConnectionRefusedError("refused"))
    with pytest.raises(LauncherUnavailable, match="create pods in namespace 'analysis'"):
        await launcher._call("create", "pods", method, "ns", {})
    assert len(method.calls) >= 2


async def test_403_names_the_missing_permission_and_the_rbac_file():
    launcher = make_launcher()
    message = (
        'services is forbidden: User "system:serviceaccount:analysis:elastic-gateway" cannot '
        'create resource "services" in API group "" in the namespace "analysis"'
    )
    method = scripted(FakeResponse(403, {"kind": "Status", "message": message, "code": 403}))
    with pytest.raises(KubernetesForbidden) as err:
        await launcher._call("create", "services", method, "ns", {})
    text = str(err.value)
    assert "permission to create services in namespace 'analysis'" in text
    assert "deploy/rbac.yaml" in text and "cannot create resource" in text
    assert len(method.calls) == 1  # not retried


async def test_other_client_errors_are_not_retried():
    launcher = make_launcher()
    method = scripted(FakeResponse(404, {"message": 'pods "x" not found'}))
    with pytest.raises(KubernetesAPIError) as err:
        await launcher._call("delete", "pods", method, "x", "ns")
    assert err.value.status == 404 and len(method.calls) == 1


async def test_an_unschedulable_scheduler_is_alive_and_reported_once_in_the_events():
    launcher = make_launcher()
    api = FakeAPI([], [])
    launcher.cache = PodCache(api.list_pods, api.open_watch, LOG)
    launcher._reported_unschedulable = set()
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory.",
    }
    launcher.cache.pods = {"dask-scheduler-c0ffee": pod("Pending", [cond])}
    launcher.cache.connected = True
    cluster = SimpleNamespace(name="c0ffee", state={"pod": "dask-scheduler-c0ffee"})
    assert await launcher.check_schedulers([cluster]) == [True]
    assert await launcher.check_schedulers([cluster]) == [True]
    [event] = launcher.backend.events.get("c0ffee")
    assert event["message"] == (
        "scheduler pod dask-scheduler-c0ffee is unschedulable: "
        "0/3 nodes are available: 3 Insufficient memory."
    )
    failed = pod("Failed", statuses=[{"name": "s", "state": {"terminated": {"exitCode": 1}}}])
    launcher.cache.pods = {"dask-scheduler-c0ffee": failed}
    assert await launcher.check_schedulers([cluster]) == [False]


def write_kubeconfig(path: Path, namespace: str | None) -> str:
    context = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://k8s.example:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": context}],
                "current-context": "ctx",
            }
        )
    )
    return str(path)


async def test_namespace_comes_from_the_setting_or_the_kubeconfig_context(tmp_path):
    from kubernetes_asyncio import client

    with_ns = write_kubeconfig(tmp_path / "a.json", "from-context")
    without = write_kubeconfig(tmp_path / "b.json", None)
    cfg = client.Configuration()
    assert await KubernetesLauncher(kubeconfig=with_ns)._load_kube_config(cfg) == "from-context"
    assert cfg.host == "https://k8s.example:6443"
    explicit = KubernetesLauncher(kubeconfig=with_ns, namespace="mine")
    assert await explicit._load_kube_config(client.Configuration()) == "mine"
    assert await KubernetesLauncher(kubeconfig=without)._load_kube_config(cfg) == "default"
    with pytest.raises(Exception, match="KubernetesLauncher cannot load its Kubernetes config"):
        await KubernetesLauncher(kubeconfig=str(tmp_path / "missing"))._load_kube_config(cfg)


# -- creating and deleting, with the API calls recorded ------------------------------------------
def recording_launcher(fail_creates: set[str] = frozenset()) -> tuple[KubernetesLauncher, dict]:
    """A launcher whose pod creates and deletes are recorded instead of sent."""
    launcher = make_launcher()
    launcher._reported_unschedulable = set()
    calls: dict[str, list] = {"created": [], "deleted": []}

    async def create_pod(manifest):
        name = manifest["metadata"]["name"]
        if name in fail_creates:
            raise KubernetesAPIError(422, f"pod {name} is invalid")
        calls["created"].append(name)
        return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "9"}}

    async def delete(resource, name, **kwargs):
        calls["deleted"].append((resource, name))
        return True

    launcher._create_pod = create_pod
    launcher._delete = delete
    return launcher, calls


async def test_stopping_a_scheduler_deletes_its_pod_service_and_secret_explicitly():
    # Garbage collection would follow the pod; explicit deletes do not depend on it.
    launcher, calls = recording_launcher()
    await launcher.stop_scheduler(make_cluster())
    assert sorted(calls["deleted"]) == [
        ("pods", "dask-scheduler-c0ffee"),
        ("secrets", "dask-credentials-c0ffee"),
        ("services", "dask-c0ffee"),
    ]


async def test_a_worker_batch_with_a_failed_create_deletes_the_pods_it_made_and_raises():
    launcher, calls = recording_launcher(fail_creates={"dask-worker-w2"})
    workers = [SimpleNamespace(name=n) for n in ("w1", "w2", "w3")]
    with pytest.raises(KubernetesAPIError, match="dask-worker-w2 is invalid"):
        await launcher.start_workers(make_cluster(), workers)
    assert sorted(calls["created"]) == ["dask-worker-w1", "dask-worker-w3"]
    assert sorted(calls["deleted"]) == [("pods", "dask-worker-w1"), ("pods", "dask-worker-w3")]


async def test_a_worker_batch_records_each_pod_and_its_resource_version():
    launcher, calls = recording_launcher()
    workers = [SimpleNamespace(name=n) for n in ("w1", "w2")]
    states = await launcher.start_workers(make_cluster(), workers)
    assert [(s["pod"], s["created_rv"]) for s in states] == [
        ("dask-worker-w1", "9"),
        ("dask-worker-w2", "9"),
    ]
    assert calls["deleted"] == []
