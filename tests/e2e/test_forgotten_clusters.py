"""No zombie clusters: a cluster without a client is stopped, and users find and stop theirs.

Real gateway, proxy, schedulers and workers on this machine; the "notebook" of
the first test is a separate Python process killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ..conftest import wait_for, workers_of
from .test_profiles import profiles_config

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

NOTEBOOK = """
import sys, time
from client_ext import ElasticGateway
gw = ElasticGateway()  # the local gateway of $ELASTIC_GATEWAY_STATE_DIR
cluster = gw.new_cluster()
client = cluster.get_client()
print(cluster.name, flush=True)
time.sleep(600)
"""


def status_of(gw, name: str) -> str:
    return gw.cluster_details(name)["status"]


def test_a_sigkilled_notebooks_cluster_stops_after_no_client_timeout_with_the_event(
    gateways, tmp_path
):
    gateway = gateways.start(profiles_config('{"short": {"no_client_timeout": 3}}'))
    gw = gateways.client(gateway)
    env = {**os.environ, "ELASTIC_GATEWAY_STATE_DIR": str(gateway.state_dir)}
    env["PYTHONPATH"] = str(REPO)
    notebook = subprocess.Popen(
        [sys.executable, "-c", NOTEBOOK], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        name = notebook.stdout.readline().strip()
        assert name, "the notebook process did not start its cluster"
        time.sleep(5)  # longer than the timeout: a connected client keeps the cluster
        assert status_of(gw, name) == "RUNNING"
        notebook.send_signal(signal.SIGKILL)
        notebook.wait(10)
        wait_for(lambda: status_of(gw, name) == "STOPPED", timeout=30, what="no-client stop")
        details = gw.cluster_details(name)
        reason = (
            "cluster stopped: no client connected for its no_client_timeout of profile short (3 s)"
        )
        assert details["stop_reason"] == reason
        assert reason in [e["message"] for e in details["events"]]
    finally:
        notebook.kill()
        notebook.wait(10)
        notebook.stdout.close()


def test_a_cluster_created_with_shutdown_on_close_false_gets_the_longer_timeout(gateways):
    gateway = gateways.start(
        profiles_config('{"p": {"no_client_timeout": 2, "detached_no_client_timeout": 600}}')
    )
    gw = gateways.client(gateway)
    kept = gw.new_cluster(shutdown_on_close=False)
    plain = gw.new_cluster()
    try:
        wait_for(lambda: status_of(gw, plain.name) == "STOPPED", timeout=30, what="plain stop")
        time.sleep(2)  # past the short timeout once more
        assert status_of(gw, kept.name) == "RUNNING"
        events = [e["message"] for e in gw.cluster_details(kept.name)["events"]]
        assert (
            "created with shutdown_on_close=False: kept without a client for up to 10 min "
            "(detached_no_client_timeout)"
        ) in events
    finally:
        kept.shutdown()
        plain.close()


def test_stop_clusters_stops_every_cluster_of_the_caller_and_no_one_elses(gateways):
    gateway = gateways.start(profiles_config('{"p": {}}'))
    alice, bob = gateways.client(gateway, "alice"), gateways.client(gateway, "bob")
    try:
        mine = {alice.submit(), alice.submit()}
        theirs = bob.submit()
        wait_for(lambda: len(alice.list_clusters()) == 2, what="alice's clusters listed")
        assert set(alice.stop_clusters()) == mine
        wait_for(lambda: alice.list_clusters() == [], what="alice's clusters gone")
        assert [r.name for r in bob.list_clusters()] == [theirs]
    finally:
        bob.stop_clusters()
        alice.close()
        bob.close()


def test_stop_clusters_filters_by_profile(gateways):
    gateway = gateways.start(profiles_config('{"a": {}, "b": {}}'))
    gw = gateways.client(gateway)
    a, b = gw.submit(profile="a"), gw.submit(profile="b")
    try:
        assert gw.stop_clusters(profile="a") == [a]
        assert [r.name for r in gw.list_clusters()] == [b]
    finally:
        gw.stop_clusters()


def test_list_clusters_shows_age_workers_cores_and_last_client_activity(gateways):
    gateway = gateways.start(profiles_config('{"two": {"worker_cores": 2, "worker_memory": 1}}'))
    gw = gateways.client(gateway)
    with gw.new_cluster() as cluster:
        cluster.scale(1)
        client = cluster.get_client()
        wait_for(lambda: workers_of(cluster) == 1, what="one worker")

        def report():
            [r] = gw.list_clusters()
            return r if r.workers["running"] == 1 and r.clients_connected == 1 else None

        r = wait_for(report, what="the worker and the client in the listing")
        assert (r.name, r.profile, r.cores, r.memory_gib) == (cluster.name, "two", 2, 1.0)
        assert 0 < r.age < 120
        assert abs(r.last_client_activity - time.time()) < 10
        assert "clients=1 connected" in repr(r)
        client.close()
        left = time.time()
        r = wait_for(lambda: [r for r in gw.list_clusters() if r.clients_connected == 0])[0]
        assert abs(r.last_client_activity - left) < 10
        assert r.client_text(now=r.last_client_activity + 7200) == "none for 2 h"


def test_the_clusters_command_lists_and_stops_the_callers_clusters(gateways):
    gateway = gateways.start(profiles_config('{"p": {}}'))
    gw = gateways.client(gateway)
    name = gw.submit()
    env = {**os.environ, "ELASTIC_GATEWAY_STATE_DIR": str(gateway.state_dir)}
    env["PYTHONPATH"] = str(REPO)

    def cli(*args: str) -> str:
        cmd = [sys.executable, "-m", "gateway_backend.cli", "clusters", *args]
        return subprocess.run(
            cmd, env=env, capture_output=True, text=True, check=True, timeout=60
        ).stdout

    try:
        listing = cli("list")
        assert listing.splitlines()[0].split() == [
            "NAME", "STATUS", "PROFILE", "AGE", "WORKERS", "CORES", "CLIENTS"
        ]  # fmt: skip
        assert name in listing
        assert cli("stop", "--older-than", "3600") == "no cluster of yours matched\n"
        assert cli("stop") == f"stopped {name}\n"
        wait_for(lambda: status_of(gw, name) == "STOPPED", what="stopped by the command")
    finally:
        gw.stop_clusters()


def scheduler_token(cluster) -> str:
    """The API token the cluster's scheduler holds: code the user runs there can read it."""
    with cluster.get_client() as client:
        return client.run_on_scheduler(lambda: os.environ["DASK_GATEWAY_API_TOKEN"])


def delete_as_scheduler(gateway, name: str, token: str, reason: str) -> int:
    query = urllib.parse.urlencode({"reason": reason})
    req = urllib.request.Request(
        f"{gateway.address}/api/v1/clusters/{name}?{query}",
        method="DELETE",
        headers={"Authorization": f"token {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_scheduler_stops_only_its_own_cluster_and_only_in_the_gateways_words(gateways):
    gateway = gateways.start(profiles_config('{"p": {}}'))
    gw = gateways.client(gateway)
    mine, other = gw.new_cluster(), gw.new_cluster()
    try:
        token = scheduler_token(mine)
        assert delete_as_scheduler(gateway, other.name, token, "no_client") == 401
        assert status_of(gw, other.name) == "RUNNING"
        assert delete_as_scheduler(gateway, mine.name, token, "<b>rm -rf</b>") == 204
        wait_for(lambda: status_of(gw, mine.name) == "STOPPED", what="the stop")
        assert gw.cluster_details(mine.name)["stop_reason"] == (
            "cluster stopped: no work for its idle_timeout of profile p (1 h)"
        )
    finally:
        mine.close()
        other.close()
