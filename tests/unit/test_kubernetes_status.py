"""Unit tests of reading pod status: phases, conditions and container states as reasons."""

from __future__ import annotations

from gateway_backend.launchers.base import Phase
from gateway_backend.launchers.kubernetes.status import check_pod, check_scheduler_pod


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
    assert check_pod(pod("Running", [ready], node="n")).phase == Phase.RUNNING
    assert check_pod(pod("Running", [], node="n")).phase == Phase.PENDING


def test_check_pod_unschedulable_is_pending_with_the_schedulers_message():
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
    }
    check = check_pod(pod("Pending", [cond]))
    assert check.phase == Phase.PENDING
    assert check.reason == "unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    assert check_pod(pod()).reason == "waiting for the Kubernetes scheduler"


def test_an_oom_killed_pod_reads_killed_for_exceeding_its_memory_limit():
    term = {"terminated": {"reason": "OOMKilled", "exitCode": 137, "message": "last log line"}}
    check = check_pod(pod("Failed", statuses=[{"name": "dask-worker", "state": term}]))
    assert check.phase == Phase.FAILED
    assert check.reason.startswith(
        "pod failed: container dask-worker was killed for exceeding its memory limit "
        "(OOMKilled, exit code 137): ask for more worker_memory"
    )
    assert check.reason.endswith("; last log lines: last log line")


def test_an_evicted_pod_says_it_was_evicted_with_the_nodes_message():
    evicted = check_pod(pod("Failed", reason="Evicted", message="node low on memory"))
    assert "the pod was evicted from its node: node low on memory" in evicted.reason


def test_a_container_killed_by_a_signal_names_the_signal():
    term = {"terminated": {"reason": "Error", "exitCode": 137}}
    check = check_pod(pod("Failed", statuses=[{"name": "dask-worker", "state": term}]))
    assert "container dask-worker was killed by signal 9 (SIGKILL)" in check.reason
    assert "(Error, exit code 137)" in check.reason


def test_an_image_that_cannot_be_pulled_keeps_the_worker_pending_with_what_to_check():
    pulling = {"waiting": {"reason": "ErrImagePull", "message": 'pull "x/y:1": not found'}}
    check = check_pod(pod(statuses=[{"name": "dask-worker", "state": pulling}], node="n"))
    assert check.phase == Phase.PENDING
    assert check.reason.startswith(
        'the image of container dask-worker cannot be pulled (ErrImagePull: pull "x/y:1": '
        "not found): check the image name of the profile or pool"
    )


def test_check_pod_permanent_waiting_reasons_fail_transient_ones_wait():
    bad = {"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}
    assert check_pod(pod(statuses=[{"name": "c", "state": bad}], node="n")).phase == (Phase.FAILED)
    pulling = {"waiting": {"reason": "ImagePullBackOff", "message": "retrying"}}
    check = check_pod(pod(statuses=[{"name": "c", "state": pulling}], node="n"))
    assert check.phase == Phase.PENDING and "ImagePullBackOff" in check.reason
    assert check_pod(pod("Running", node="n", deleting=True)).phase == Phase.FAILED


def test_a_scheduler_pod_fails_only_once_it_ended_with_the_pods_reason():
    bad = {"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}
    waiting = check_scheduler_pod(pod(statuses=[{"name": "c", "state": bad}], node="n"))
    assert waiting.phase == Phase.PENDING and "InvalidImageName: bad ref" in waiting.reason
    term = {"terminated": {"reason": "Error", "exitCode": 1, "message": "Traceback"}}
    ended = check_scheduler_pod(pod("Failed", statuses=[{"name": "s", "state": term}]))
    assert ended.phase == Phase.FAILED
    assert ended.reason == "pod failed: container s Error (exit code 1); last log lines: Traceback"
    deleting = check_scheduler_pod(pod("Running", node="n", deleting=True))
    assert (deleting.phase, deleting.reason) == (Phase.FAILED, "the pod is being deleted")
