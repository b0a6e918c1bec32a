"""Unit tests of KubernetesLauncher: settings, status from the cache, strays, create and delete."""

from __future__ import annotations

import logging
import socket
from types import SimpleNamespace

import pytest
from traitlets import TraitError

from gateway_backend.events import EventLog
from gateway_backend.launchers.base import WorkerPhase
from gateway_backend.launchers.htcondor import HTCondorLauncher
from gateway_backend.launchers.kubernetes import KubernetesLauncher
from gateway_backend.launchers.kubernetes.client import KubernetesAPIError
from gateway_backend.launchers.kubernetes.watch import PodCache

from .test_kubernetes_manifests_unit import make_cluster, make_settings
from .test_kubernetes_status_unit import pod
from .test_kubernetes_watch_unit import FakeAPI, obj

LOG = logging.getLogger("test")


def make_launcher(**traits) -> KubernetesLauncher:
    launcher = KubernetesLauncher(gateway_id="gw-test", **traits)
    launcher.namespace = traits.get("namespace", "analysis")
    launcher.backend = SimpleNamespace(
        cluster_heartbeat_period=7, api_url="http://gateway.example:8000/api", events=EventLog()
    )
    return launcher


def test_manifests_are_built_from_the_launchers_settings():
    # The manifest unit tests use make_settings(): the settings of a default launcher.
    assert make_launcher()._manifest_settings() == make_settings()
    assert make_launcher(image="registry.example/dask:1")._manifest_settings() == make_settings(
        image="registry.example/dask:1"
    )


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
