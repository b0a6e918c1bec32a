"""Logs and reasons on the local launcher, end to end: real gateway, proxy and Dask processes.

What the analyst sees when a worker dies (SIGKILL, memory) or a scheduler cannot
start: the reason in ``details()`` within seconds, and every process's log,
stopped ones too, through ``cluster.logs()``; nobody else sees them.
"""

from __future__ import annotations

import os
import signal

import pytest
from dask_gateway.client import GatewayClusterError

from ..conftest import http, process_groups, wait_for, workers_of

pytestmark = pytest.mark.e2e


def _worker_name(cluster) -> str:
    [info] = cluster.scheduler_info["workers"].values()
    return str(info["name"])


def _worker_group(gateway) -> int:
    """The process group of the one worker (the scheduler's group started first)."""
    import psutil

    groups = sorted(process_groups(gateway), key=lambda g: psutil.Process(g).create_time())
    assert len(groups) == 2, groups
    return groups[1]


def _event_with(gw, name: str, *parts: str) -> str | None:
    for event in gw.cluster_details(name)["events"]:
        if all(p in event["message"] for p in parts):
            return event["message"]
    return None


def _say_and_return(text: str) -> str:
    print(text, flush=True)  # goes to the worker's log
    return text


def test_a_worker_killed_with_sigkill_shows_the_signal_and_its_log_stays_readable(gw, gateway):
    cluster = gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, what="1 worker")
    client = cluster.get_client()
    assert client.submit(_say_and_return, "the task's marker line").result()
    name = _worker_name(cluster)

    os.killpg(_worker_group(gateway), signal.SIGKILL)

    message = wait_for(
        lambda: _event_with(gw, cluster.name, f"worker {name}", "was killed by signal 9"),
        timeout=15,
        what="the SIGKILL reason in details()",
    )
    assert "SIGKILL" in message and "out-of-memory" in message
    logs = wait_for(lambda: (lg := cluster.logs()).get(name) and lg, what="the dead worker's log")
    assert "the task's marker line" in logs[name]
    assert "Starting Worker" in logs[name]
    assert "Scheduler at:" in logs["scheduler"]
    client.close()
    cluster.shutdown()


def test_logs_of_one_worker_return_only_its_last_lines(gw, gateway):
    cluster = gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, what="1 worker")
    name = _worker_name(cluster)

    logs = cluster.logs(worker=name, tail=2)

    assert list(logs) == [name]
    assert len(logs[name].splitlines()) == 2
    assert cluster.logs(worker="scheduler", tail=0) == {"scheduler": ""}
    cluster.shutdown()


def _allocate_and_hold(megabytes: int) -> None:
    import time

    print(f"allocating {megabytes} MB", flush=True)
    block = bytearray(megabytes * 2**20)
    time.sleep(30)
    del block


def test_a_worker_killed_for_memory_names_the_task_it_was_running(gw, gateway):
    cluster = gw.new_cluster(worker_memory=0.25)
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, what="1 worker")
    client = cluster.get_client()
    name = _worker_name(cluster)

    future = client.submit(_allocate_and_hold, 400, key="hog-the-memory")

    message = wait_for(
        lambda: _event_with(gw, cluster.name, f"worker {name}", "exceeding its memory limit"),
        timeout=30,
        what="the memory reason in details()",
    )
    assert "while running task 'hog-the-memory'" in message
    assert "worker_memory" in message  # what to change
    logs = cluster.logs(worker=name)[name]
    assert "allocating 400 MB" in logs and "memory budget" in logs
    future.cancel()
    client.close()
    cluster.shutdown()


def test_other_users_get_404_for_logs_also_after_the_cluster_stopped(gw, gateway):
    cluster = gw.new_cluster()
    name = cluster.name
    path = f"/api/elastic/v1/clusters/{name}/logs"
    assert http(gateway, "GET", path, username="mallory")[0] == 404

    cluster.shutdown()
    wait_for(lambda: not gw.list_clusters(), what="the cluster to stop")

    assert http(gateway, "GET", path, username="mallory")[0] == 404
    status, body = http(gateway, "GET", path)
    assert status == 200 and "Scheduler at:" in body["logs"]["scheduler"]


def test_bad_log_parameters_are_refused_naming_the_parameter(gw, gateway):
    cluster = gw.new_cluster()
    path = f"/api/elastic/v1/clusters/{cluster.name}/logs"

    status, body = http(gateway, "GET", path + "?tail=-1")
    assert status == 422 and "tail must be a number of lines" in body["error"]
    status, body = http(gateway, "GET", path + "?worker=..%2Fetc")
    assert status == 422 and "worker must be a worker name" in body["error"]
    status, body = http(gateway, "GET", path + "?worker=nosuchworker")
    assert status == 404 and "No log of nosuchworker" in body["error"]
    cluster.shutdown()


def test_logs_are_deleted_when_the_retention_time_is_zero(gateways):
    gateway = gateways.start("c.ElasticBackend.log_keep_for = 0\n")
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster()
        name = cluster.name
        assert "scheduler" in cluster.logs()
        cluster.shutdown()
        wait_for(lambda: not gw.list_clusters(), what="the cluster to stop")
        path = f"/api/elastic/v1/clusters/{name}/logs"
        # The record is kept a while longer (upstream's db_cluster_max_age): no logs left.
        deleted = (200, {"cluster": name, "logs": {}})
        wait_for(lambda: http(gateway, "GET", path) == deleted, what="the logs deleted")
        assert not os.listdir(gateway.state_dir / "logs")
    finally:
        gw.close()


def test_a_scheduler_that_cannot_start_raises_with_its_last_log_lines(gateways):
    gateway = gateways.start(
        'c.ElasticClusterConfig.scheduler_cmd = ["python", "-c", '
        "\"print('cannot import the analysis library'); raise SystemExit(3)\"]\n"
    )
    gw = gateways.client(gateway)
    try:
        with pytest.raises(GatewayClusterError) as failure:
            gw.new_cluster()
        message = str(failure.value)
        assert "failed to start: the scheduler stopped: the scheduler process exited" in message
        assert "with code 3" in message
        assert "Last lines of the scheduler's log:\ncannot import the analysis library" in message
    finally:
        gw.close()
