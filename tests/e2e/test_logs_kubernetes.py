"""Logs and reasons of pods, end to end on the real control plane with the process kubelet.

A worker pod killed with SIGKILL: the reason in ``details()`` within seconds, and its log
(read through the Kubernetes log API before the pod was deleted) still in ``cluster.logs()``
after the pod is gone. A worker image that cannot be pulled: the worker stays pending with
the pull error in the analyst's words.
"""

from __future__ import annotations

import os
import signal

import pytest

from ..conftest import wait_for, workers_of
from . import test_kubernetes
from .test_kubernetes import WORKER, local_only

# The control plane and the per-test namespace, kubelet and gateway of test_kubernetes.py.
kube_env = test_kubernetes.kube_env
make_k8s = test_kubernetes.make_k8s

pytestmark = pytest.mark.e2e


def _event_with(gw, name: str, *parts: str) -> str | None:
    for event in gw.cluster_details(name)["events"]:
        if all(p in event["message"] for p in parts):
            return event["message"]
    return None


@local_only
def test_a_killed_worker_pod_shows_the_signal_and_its_log_outlives_the_pod(make_k8s):
    k = make_k8s()
    cluster = k.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 pod worker")
    client = cluster.get_client()
    # A lambda travels by value: the pod's Python cannot import this test module.
    assert client.submit(lambda: print("the pod task's marker line", flush=True) or 1).result()
    [pod] = k.pods(cluster, **WORKER)
    name = pod["metadata"]["labels"]["gateway.dask.org/worker"]
    [status] = pod["status"]["containerStatuses"]
    pid = int(status["containerID"].removeprefix("process://"))

    os.killpg(pid, signal.SIGKILL)

    message = wait_for(
        lambda: _event_with(k.gw, cluster.name, f"worker {name}", "was killed by signal 9"),
        timeout=20,
        what="the SIGKILL reason in details()",
    )
    assert "exit code 137" in message
    wait_for(lambda: name not in k.worker_pod_names(cluster), what="the dead worker's pod deleted")
    logs = cluster.logs()
    assert "the pod task's marker line" in logs[name]
    assert "Scheduler at:" in logs["scheduler"]
    client.close()
    cluster.shutdown()


@local_only
def test_a_worker_image_that_cannot_be_pulled_keeps_the_worker_pending_saying_why(make_k8s):
    image = "unpullable.invalid/analysis:1"
    pools = {"pods": {"launcher": "kubernetes", "image": image}}
    k = make_k8s(extra=f"c.ElasticBackend.worker_pools = {pools!r}\n")
    cluster = k.gw.new_cluster()
    cluster.scale(1)

    def pull_reason():
        reasons = k.gw.cluster_details(cluster.name)["pools"]["pods"]["pending_reasons"]
        return next((r for r in reasons if "ImagePullBackOff" in r), None)

    reason = wait_for(pull_reason, timeout=60, what="the image pull reason")
    assert reason.startswith("the image of container dask-worker cannot be pulled")
    assert f'Back-off pulling image "{image}"' in reason
    assert "check the image name of the profile or pool" in reason
    cluster.shutdown()
