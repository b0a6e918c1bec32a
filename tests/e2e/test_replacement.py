"""Lost workers are replaced up to the requested count, under a per-cluster failure budget.

Per launcher: local processes, pods on the real control plane with the process kubelet,
HTCondor jobs on the schedd stand-in. A worker is *lost* when its process, job or pod ends
or disappears without the analyst or adaptive scaling asking for fewer.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from dask_gateway import GatewayWarning

from ..conftest import process_groups, wait_for, workers_of
from .test_htcondor import make_pool, needs_standin
from .test_kubernetes import kube_env, make_k8s
from .test_quotas import GROUPS_AUTH, SIZES

pytestmark = pytest.mark.e2e
FIXTURES = (make_pool, kube_env, make_k8s)  # pytest finds them here by name

# Short back-off and budget, so a crash loop is over in seconds.
FAST_REPLACEMENT = (
    "c.ElasticBackend.worker_replace_backoff = 0.5\n"
    "c.ElasticBackend.worker_replace_backoff_max = 2\n"
    "c.ElasticBackend.worker_failure_budget = 3\n"
)
ALWAYS_FAILS = (
    'c.ElasticClusterConfig.worker_cmd = ["python", "-c", '
    "\"import sys; sys.exit('worker image is broken')\"]\n"
)
SPENT = "stopped replacing lost workers"


def events_of(gw, cluster, text: str) -> list[str]:
    return [
        e["message"] for e in gw.cluster_details(cluster.name)["events"] if text in e["message"]
    ]


def assert_stops_after_the_budget_with_one_event(gw, cluster, reason: str) -> None:
    """The budget of 3 is spent, said once with the reason, and no worker starts after."""
    [spent] = wait_for(lambda: events_of(gw, cluster, SPENT), timeout=90, what="the budget")
    assert "lost 3 times in a row" in spent, spent
    assert "ElasticBackend.worker_failure_budget=3" in spent and reason in spent, spent
    assert "scale the cluster again" in spent
    failures = len(events_of(gw, cluster, "failed"))
    time.sleep(4)  # several check periods and more than the longest back-off
    assert len(events_of(gw, cluster, "failed")) == failures  # nothing was started again
    assert len(events_of(gw, cluster, SPENT)) == 1
    assert gw.cluster_details(cluster.name)["status"] == "RUNNING"  # the cluster is kept


def restart_brings_every_worker_back(cluster, n: int, timeout: float = 90) -> None:
    """``client.restart()``: the same workers (names) come back in new processes."""
    client = cluster.get_client()
    try:
        wait_for(lambda: len(client.scheduler_info()["workers"]) == n, what=f"{n} workers")
        names = {w["name"] for w in client.scheduler_info()["workers"].values()}
        pids = client.run(os.getpid)
        client.restart()

        def back():
            try:
                now = client.run(os.getpid)
            except Exception:
                return None
            return now if len(now) == n else None

        after = wait_for(back, timeout=timeout, what=f"{n} restarted workers")
        assert set(after.values()).isdisjoint(pids.values())
        assert {w["name"] for w in client.scheduler_info()["workers"].values()} == names
        assert client.submit(lambda: 6 * 7).result() == 42
    finally:
        client.close()


# -- local processes --------------------------------------------------------------------------
def test_local_worker_killed_after_connecting_is_replaced_before_the_restart_grace(gateways):
    gateway = gateways.start(FAST_REPLACEMENT + "c.ElasticBackend.worker_restart_grace = 120\n")
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(2)
        wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
        before = set(cluster.scheduler_info["workers"])
        scheduler = min(process_groups(gateway), key=_started)
        victim = next(g for g in process_groups(gateway) if g != scheduler)
        os.killpg(victim, signal.SIGKILL)

        def replaced():
            now = set(cluster.scheduler_info["workers"])
            return len(now) == 2 and now != before

        # Well within the 120 s grace: the launcher saw the process end.
        wait_for(replaced, timeout=30, what="a replacement worker")
        assert len(process_groups(gateway)) == 1 + 2
        [lost] = events_of(gw, cluster, "replacing lost workers in")
        assert "the worker process was killed by signal 9 (SIGKILL)" in lost
        assert "failure 1 of the budget of 3" in lost
        cluster.shutdown()
    finally:
        gw.close()


def test_local_worker_command_that_always_fails_stops_after_the_budget(gateways):
    gateway = gateways.start(FAST_REPLACEMENT + ALWAYS_FAILS)
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(2)
        assert_stops_after_the_budget_with_one_event(gw, cluster, "worker image is broken")
        assert len(process_groups(gateway)) == 1  # the scheduler only
        cluster.shutdown()
    finally:
        gw.close()


def test_a_scale_request_after_the_budget_was_spent_tries_again(gateways):
    gateway = gateways.start(FAST_REPLACEMENT + ALWAYS_FAILS)
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(1)
        wait_for(lambda: events_of(gw, cluster, SPENT), timeout=90, what="the budget")
        cluster.scale(2)
        wait_for(lambda: events_of(gw, cluster, "replacing lost workers again"), what="renewal")
        wait_for(lambda: len(events_of(gw, cluster, SPENT)) == 2, timeout=90, what="2nd budget")
        cluster.shutdown()
    finally:
        gw.close()


def test_workers_adaptive_scaling_retired_are_not_replaced(gateways):
    gateway = gateways.start(FAST_REPLACEMENT)
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        cluster.scale(3)
        wait_for(lambda: workers_of(cluster) == 3, what="3 workers")
        cluster.adapt(minimum=1, maximum=3)  # nothing to do: idle workers are retired
        wait_for(lambda: workers_of(cluster) == 1, timeout=60, what="adaptive scale-down to 1")
        time.sleep(5)
        assert workers_of(cluster) == 1
        assert len(process_groups(gateway)) == 1 + 1
        assert events_of(gw, cluster, " lost") == []
        cluster.shutdown()
    finally:
        gw.close()


def test_replacements_stay_within_the_vo_quota(gateways):
    vos = '{"cms": {"groups": ["cms"], "max_cores": 3}}'  # the scheduler and 2 workers
    gateway = gateways.start(GROUPS_AUTH + SIZES + f"c.ElasticBackend.vos = {vos}\n")
    gw = gateways.client(gateway, "alice")
    try:
        cluster = gw.new_cluster()
        with pytest.warns(GatewayWarning, match="granted 2 of 4 workers"):
            cluster.scale(4)
        wait_for(lambda: workers_of(cluster) == 2, what="the 2 workers the quota grants")
        before = set(cluster.scheduler_info["workers"])
        scheduler = min(process_groups(gateway), key=_started)
        os.killpg(next(g for g in process_groups(gateway) if g != scheduler), signal.SIGKILL)
        most = 0

        def replaced():
            nonlocal most
            most = max(most, len(process_groups(gateway)))
            now = set(cluster.scheduler_info["workers"])
            return len(now) == 2 and now != before

        wait_for(replaced, timeout=30, what="a replacement within the quota")
        time.sleep(3)
        assert most <= 1 + 2 and len(process_groups(gateway)) == 1 + 2
        assert workers_of(cluster) == 2
        cluster.shutdown()
    finally:
        gw.close()


def test_client_restart_brings_every_local_worker_back(gw):
    cluster = gw.new_cluster()
    cluster.scale(2)
    restart_brings_every_worker_back(cluster, 2)
    assert events_of(gw, cluster, " lost") == []
    cluster.shutdown()


def _started(pgid: int) -> float:
    import psutil

    return psutil.Process(pgid).create_time()


# -- HTCondor jobs (schedd stand-in) ----------------------------------------------------------
@needs_standin
def test_a_job_removed_before_its_worker_connected_is_replaced_and_the_count_reached(make_pool):
    import htcondor2

    pool = make_pool(slots=0, extra=FAST_REPLACEMENT)  # jobs stay idle until slots are added
    cluster = pool.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: len(pool.jobs("JobStatus == 1")) == 2, what="2 idle jobs")
    [victim, kept] = pool.jobs()
    pool.schedd.act(htcondor2.JobAction.Remove, f"{victim['ClusterId']}.{victim['ProcId']}")

    def replacement():
        names = {j["DaskGatewayWorker"] for j in pool.jobs("JobStatus == 1")}
        return len(names) == 2 and victim["DaskGatewayWorker"] not in names

    wait_for(replacement, timeout=60, what="a replacement job")
    pool.control.set_slots(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 workers")
    names = {w["name"] for w in cluster.scheduler_info["workers"].values()}
    assert kept["DaskGatewayWorker"] in names and victim["DaskGatewayWorker"] not in names
    [lost] = events_of(pool.gw, cluster, "replacing lost workers in")
    assert "the job left the schedd queue" in lost
    cluster.shutdown()


def test_htcondor_worker_command_that_always_fails_stops_after_the_budget(make_pool):
    pool = make_pool(extra=FAST_REPLACEMENT + ALWAYS_FAILS)
    cluster = pool.gw.new_cluster()
    cluster.scale(2)
    assert_stops_after_the_budget_with_one_event(pool.gw, cluster, "worker image is broken")
    wait_for(lambda: pool.jobs() == [], what="no job left")
    cluster.shutdown()


# client.restart() on HTCondor workers: test_htcondor.py's
# test_nanny_workers_restart_and_take_nanny_plugins_through_the_proxy.


# -- Kubernetes pods (real control plane, process kubelet) ------------------------------------
def test_a_worker_pod_deleted_is_replaced(make_k8s):
    k = make_k8s(extra=FAST_REPLACEMENT)
    cluster = k.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 pod workers")
    victim = sorted(k.worker_pod_names(cluster))[0]
    k.ns.admin.request("DELETE", f"/api/v1/namespaces/{k.ns.name}/pods/dask-worker-{victim}")

    def replaced():
        names = {w["name"] for w in cluster.scheduler_info["workers"].values()}
        return len(names) == 2 and victim not in names

    wait_for(replaced, timeout=90, what="a replacement pod worker")
    assert len(k.worker_pod_names(cluster)) == 2
    assert events_of(k.gw, cluster, "replacing lost workers in")
    cluster.shutdown()


def test_pod_worker_command_that_always_fails_stops_after_the_budget(make_k8s):
    k = make_k8s(extra=FAST_REPLACEMENT + ALWAYS_FAILS)
    cluster = k.gw.new_cluster()
    cluster.scale(2)
    assert_stops_after_the_budget_with_one_event(k.gw, cluster, "worker image is broken")
    cluster.shutdown()


def test_client_restart_brings_every_pod_worker_back(make_k8s):
    k = make_k8s()
    cluster = k.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 pod workers")
    pods = k.worker_pod_names(cluster)
    restart_brings_every_worker_back(cluster, 2)
    assert k.worker_pod_names(cluster) == pods  # restarted in place, not replaced
    cluster.shutdown()
