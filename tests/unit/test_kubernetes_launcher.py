"""Unit tests of KubernetesLauncher: settings, status from the cache, strays, create and delete."""

from __future__ import annotations

import logging
import socket
from types import SimpleNamespace

import pytest
from traitlets import TraitError
from traitlets.config import Config

from gateway_backend.config import ConfigError
from gateway_backend.events import EventLog
from gateway_backend.launchers.base import ClusterFacts, KnownRecords, Phase
from gateway_backend.launchers.htcondor import HTCondorLauncher
from gateway_backend.launchers.kubernetes import KubernetesLauncher
from gateway_backend.launchers.kubernetes.client import KubernetesAPIError
from gateway_backend.launchers.kubernetes.watch import PodCache
from gateway_backend.launchers.local import LocalLauncher

from ..support_launchers import known, launcher_context
from .test_kubernetes_client import write_kubeconfig
from .test_kubernetes_manifests import make_cluster, make_settings
from .test_kubernetes_status import pod
from .test_kubernetes_watch import FakeAPI, obj

LOG = logging.getLogger("test")
FACTS = ClusterFacts()


def make_launcher(
    records: KnownRecords | None = None, events: EventLog | None = None, **traits
) -> KubernetesLauncher:
    """A launcher with a context but not set up: nothing talks to an API server."""
    launcher = KubernetesLauncher(gateway_id="gw-test", **traits)
    launcher.namespace = traits.get("namespace", "analysis")
    launcher.context = launcher_context(
        launcher,
        records=records,
        events=events,
        api_url="http://gateway.example:8000/api",
        heartbeat_period=7,
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
        Phase.RUNNING,
        Phase.FAILED,
        Phase.PENDING,
        Phase.PENDING,
    ]
    assert checks[1].reason == "pod dask-worker-b was deleted"
    # While the watch is down nothing is declared gone: "never lose a cluster".
    launcher.cache.connected, launcher.cache.error = False, "ClientConnectorError"
    checks = await launcher.check_workers([worker("b", pod="dask-worker-b", created_rv="15")])
    assert checks[0].phase == Phase.PENDING
    assert "Kubernetes API unreachable (ClientConnectorError)" in checks[0].reason
    clusters = [SimpleNamespace(name="x", state={"pod": "gone", "created_rv": "1"})]
    [check] = await launcher.check_schedulers(clusters)
    assert check.phase == Phase.PENDING and "Kubernetes API unreachable" in check.reason
    launcher.cache.connected = True
    [check] = await launcher.check_schedulers(clusters)
    assert (check.phase, check.reason) == (Phase.FAILED, "pod gone was deleted")


async def test_strays_are_pods_without_an_active_record():
    launcher = make_launcher(records=known(["k"], ["known"]))
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
    launcher.cache.synced.set()  # the first list is in
    assert await launcher.remove_unknown(known(["k"], ["known"])) == 2
    assert sorted(deleted) == [("pods", "s-stray"), ("pods", "w-stray")]
    # The periodic reconciliation asks the gateway for its records each time.
    deleted.clear()
    launcher.context = launcher_context(launcher, records=known(["k"], ["known", "stray"]))
    launcher.cache.connected = True
    await launcher._reconcile()
    assert deleted == [("pods", "s-stray")]


async def test_an_unschedulable_scheduler_is_alive_and_reported_once_in_the_events():
    events = EventLog()
    launcher = make_launcher(events=events)
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
    for _ in range(2):
        [check] = await launcher.check_schedulers([cluster])
        assert check.phase == Phase.PENDING and check.reason.startswith("unschedulable: 0/3")
    [event] = events.get("c0ffee")
    assert event["message"] == (
        "scheduler pod dask-scheduler-c0ffee is unschedulable: "
        "0/3 nodes are available: 3 Insufficient memory."
    )
    failed = pod("Failed", statuses=[{"name": "s", "state": {"terminated": {"exitCode": 1}}}])
    launcher.cache.pods = {"dask-scheduler-c0ffee": failed}
    [check] = await launcher.check_schedulers([cluster])
    assert (check.phase, check.reason) == (
        Phase.FAILED,
        "pod failed: container s terminated (exit code 1)",
    )


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
        await launcher.start_workers(make_cluster(), workers, FACTS)
    assert sorted(calls["created"]) == ["dask-worker-w1", "dask-worker-w3"]
    assert sorted(calls["deleted"]) == [("pods", "dask-worker-w1"), ("pods", "dask-worker-w3")]


async def test_a_worker_batch_records_each_pod_and_its_resource_version():
    launcher, calls = recording_launcher()
    workers = [SimpleNamespace(name=n) for n in ("w1", "w2")]
    states = await launcher.start_workers(make_cluster(), workers, FACTS)
    assert [(s["pod"], s["created_rv"]) for s in states] == [
        ("dask-worker-w1", "9"),
        ("dask-worker-w2", "9"),
    ]
    assert calls["deleted"] == []


async def test_a_kubernetes_pool_needs_kubernetes_schedulers():
    pool = KubernetesLauncher()
    context = launcher_context(pool, scheduler_launcher=LocalLauncher(), name="pods")
    with pytest.raises(ConfigError, match="needs the scheduler in Kubernetes too"):
        await pool.setup(context)


async def test_a_pool_in_another_namespace_than_the_schedulers_is_refused_naming_its_key(tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig.json", "analysis")
    scheduler = KubernetesLauncher(kubeconfig=kubeconfig)  # the context's namespace
    pool = KubernetesLauncher(kubeconfig=kubeconfig, namespace="gpu-nodes")
    context = launcher_context(pool, scheduler_launcher=scheduler, name="gpu")
    with pytest.raises(ConfigError) as err:
        await pool.setup(context)
    assert "ElasticBackend.worker_pools['gpu'] runs worker pods in namespace 'gpu-nodes'" in str(
        err.value
    )
    assert "schedulers run in 'analysis'" in str(err.value)
    # In the schedulers' namespace it starts (and its watch retries in the background).
    pool = KubernetesLauncher(kubeconfig=kubeconfig, namespace="analysis", watch_backoff_max=60)
    await pool.setup(launcher_context(pool, scheduler_launcher=scheduler, name="gpu"))
    await pool.cleanup()


def test_the_kubeconfig_context_is_still_read_under_its_former_name(caplog):
    config = Config()
    config.KubernetesLauncher.context = "prod"
    assert KubernetesLauncher(config=config).kubeconfig_context == "prod"
    assert "KubernetesLauncher.context is deprecated" in caplog.text
