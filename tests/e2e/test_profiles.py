"""Profiles end to end on local processes: the environment, sizes, VOs, GPUs, lifetimes.

Real gateway and proxy; the second Python environment is a virtualenv the test makes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from dask_gateway import GatewayWarning

from ..conftest import http, wait_for, workers_of
from .test_quotas import GROUPS_AUTH, SIZES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def second_python(tmp_path_factory) -> str:
    """A Python environment of its own (its own ``sys.prefix``) that can run Dask.

    A virtualenv without packages, whose site-packages points at this one's by a
    ``.pth`` file: what an admin's conda env or venv is, without a second install.
    """
    env = tmp_path_factory.mktemp("profile-env") / "coffea-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "host-packages.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{REPO}\n")
    return str(python)


def profiles_config(profiles: str) -> str:
    return GROUPS_AUTH + SIZES + f"c.ElasticBackend.profiles = {profiles}\n"


def test_scheduler_and_workers_run_in_the_profiles_python_environment(gateways, second_python):
    gateway = gateways.start(
        profiles_config(f'{{"plain": {{}}, "coffea": {{"python": {second_python!r}}}}}')
    )
    gw = gateways.client(gateway, "alice")
    env_prefix = str(Path(second_python).parents[1])
    with gw.new_cluster(profile="coffea") as cluster:
        cluster.scale(2)
        client = cluster.get_client()
        wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
        assert client.run_on_scheduler(lambda: sys.prefix) == env_prefix
        assert set(client.run(lambda: sys.prefix).values()) == {env_prefix}
        assert client.submit(lambda: sys.executable).result().startswith(env_prefix)
        details = cluster.details()
        assert details["profile"] == "coffea"
        assert details["environment"] == f"Python {second_python}"
        assert "profile=coffea" in repr(cluster)
    with gw.new_cluster() as cluster:  # the first profile is the default
        client = cluster.get_client()
        assert client.run_on_scheduler(lambda: sys.prefix) == sys.prefix
        assert cluster.details()["profile"] == "plain"


VO_PROFILES = """{
    "cms-coffea": {"display_name": "CMS coffea", "vos": ["cms"],
                   "worker_cores": {"min": 1, "max": 2, "default": 1},
                   "worker_memory": [0.5, 1]},
    "dune-larsoft": {"vos": ["dune"], "worker_memory": 0.5},
    "everyone": {"worker_memory": 0.5},
}"""
VOS = 'c.ElasticBackend.vos = {"cms": {"groups": ["cms"]}, "dune": {"groups": ["dune"]}}\n'


def test_users_see_only_the_profiles_their_vos_allow(gateways):
    gateway = gateways.start(profiles_config(VO_PROFILES) + VOS)
    with gateways.client(gateway, "carol") as carol:
        spec = carol.cluster_options(use_local_defaults=False)
    assert list(spec._fields["profile"].options) == ["dune-larsoft", "everyone"]
    listed = http(gateway, "GET", "/api/elastic/v1/profiles", username="alice")[1]
    assert [p["name"] for p in listed["profiles"]] == ["cms-coffea", "everyone"]
    assert listed["profiles"][0]["worker_memory_gib"] == {"default": 0.5, "choices": [0.5, 1.0]}


def test_another_vos_profile_is_refused_naming_the_allowed_ones(gateways):
    gateway = gateways.start(profiles_config(VO_PROFILES) + VOS)
    request = {"cluster_options": {"profile": "cms-coffea"}}
    status, body = http(gateway, "POST", "/api/v1/clusters/", request, "carol")
    assert status == 422
    assert "profile 'cms-coffea' is not one you may use" in body["error"]
    assert "choose from: dune-larsoft, everyone" in body["error"]


def test_a_user_in_two_vos_gets_the_vo_the_profile_is_for(gateways):
    gateway = gateways.start(profiles_config(VO_PROFILES) + VOS)
    request = {"cluster_options": {"profile": "dune-larsoft"}}
    status, body = http(gateway, "POST", "/api/v1/clusters/", request, "dave")
    assert status == 201, body
    details = http(gateway, "GET", f"/api/elastic/v1/clusters/{body['name']}", username="dave")
    assert details[1]["options"]["vo"] == "dune"
    request = {"cluster_options": {"profile": "dune-larsoft", "vo": "cms"}}
    status, body = http(gateway, "POST", "/api/v1/clusters/", request, "dave")
    assert status == 422 and "profile dune-larsoft is for VO(s) dune" in body["error"]


def test_sizes_outside_the_profile_are_refused_and_omitted_ones_are_its_defaults(gateways):
    gateway = gateways.start(profiles_config(VO_PROFILES) + VOS)
    request = {"cluster_options": {"profile": "cms-coffea", "worker_memory": 0.75}}
    status, body = http(gateway, "POST", "/api/v1/clusters/", request, "alice")
    assert status == 422
    assert (
        "profile cms-coffea: worker_memory=0.75 is not offered: use one of 0.5, 1"
        in (body["error"])
    )
    status, body = http(
        gateway, "POST", "/api/v1/clusters/", {"cluster_options": {"profile": "everyone"}}, "alice"
    )
    assert status == 201
    record = http(gateway, "GET", f"/api/v1/clusters/{body['name']}", username="alice")[1]
    assert record["options"]["worker_memory"] == 0.5


def test_idle_timeout_stops_the_cluster_with_an_event(gateways):
    gateway = gateways.start(profiles_config('{"short": {"idle_timeout": 3}}'))
    gw = gateways.client(gateway, "alice")
    cluster = gw.new_cluster()
    name = cluster.name
    try:
        wait_for(
            lambda: gw.cluster_details(name)["status"] == "STOPPED", timeout=40, what="idle stop"
        )
        details = gw.cluster_details(name)
        assert details["stop_reason"] == (
            "cluster stopped: no work for its idle_timeout of profile short (3 s)"
        )
        assert any("idle_timeout" in e["message"] for e in details["events"])
    finally:
        cluster.close()


def test_max_lifetime_stops_a_busy_cluster_with_an_event(gateways):
    gateway = gateways.start(profiles_config('{"brief": {"max_lifetime": 4}}'))
    gw = gateways.client(gateway, "alice")
    cluster = gw.new_cluster()
    name = cluster.name
    try:
        cluster.scale(1)
        wait_for(lambda: gw.cluster_details(name)["status"] == "STOPPED", timeout=40, what="stop")
        details = gw.cluster_details(name)
        assert details["stop_reason"] == (
            "cluster stopped: it reached its max_lifetime of profile brief (4 s)"
        )
    finally:
        cluster.close()


def test_gpu_workers_get_their_own_devices_and_run_gpu_tasks(gateways):
    gateway = gateways.start(
        profiles_config('{"cpu": {}, "gpu": {"worker_gpus": 1}}')
        + 'c.LocalLauncher.gpu_devices = ["0", "1"]\n'
    )
    gw = gateways.client(gateway, "alice")
    with gw.new_cluster(profile="gpu") as cluster:
        cluster.scale(2)
        client = cluster.get_client()
        wait_for(lambda: workers_of(cluster) == 2, what="2 GPU workers")
        devices = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
        assert sorted(devices.values()) == ["0", "1"]
        resources = {w["id"]: w["resources"] for w in client.scheduler_info()["workers"].values()}
        assert all(r == {"GPU": 1} for r in resources.values())
        future = client.submit(lambda: os.environ["CUDA_VISIBLE_DEVICES"], resources={"GPU": 1})
        assert future.result(timeout=30) in {"0", "1"}
        cluster.scale(3)  # a third worker finds no free device: the owner reads why
        wait_for(
            lambda: any(
                "need 1 free device(s), 0 of the 2 devices" in e["message"]
                for e in cluster.details()["events"]
            ),
            what="the no-free-GPU event",
        )
    with gw.new_cluster(profile="cpu") as cluster:
        cluster.scale(1)
        client = cluster.get_client()
        wait_for(lambda: workers_of(cluster) == 1, what="a CPU worker")
        future = client.submit(lambda: 1, resources={"GPU": 1})
        with pytest.raises(TimeoutError):
            future.result(timeout=2)  # no worker offers a GPU: the task waits


def test_profiles_naming_unknown_pools_stop_start_up_naming_the_key(gateways):
    with pytest.raises(RuntimeError) as err:
        gateways.start('c.ElasticBackend.profiles = {"p": {"pools": ["tape"]}}\n')
    assert "ElasticBackend.profiles['p']['pools'] names ['tape'], not pools" in str(err.value)


def test_profiles_and_custom_cluster_options_together_stop_start_up(gateways):
    with pytest.raises(RuntimeError) as err:
        gateways.start(
            "from dask_gateway_server.options import Options, Integer\n"
            'c.ElasticBackend.cluster_options = Options(Integer("worker_cores", 1))\n'
            'c.ElasticBackend.profiles = {"p": {}}\n'
        )
    assert "ElasticBackend.profiles and cluster_options are both set" in str(err.value)


def test_the_vos_max_gpus_holds_for_gpu_profiles(gateways):
    gateway = gateways.start(
        profiles_config('{"gpu": {"worker_gpus": 1, "worker_memory": 0.5}}')
        + 'c.ElasticBackend.vos = {"cms": {"groups": ["cms"], "max_gpus": 1}}\n'
        + 'c.LocalLauncher.gpu_devices = ["0", "1", "2"]\n'
    )
    gw = gateways.client(gateway, "alice")
    with gw.new_cluster(profile="gpu") as cluster:
        with pytest.warns(GatewayWarning, match="max_gpus=1"):
            cluster.scale(2)
        wait_for(lambda: workers_of(cluster) == 1, what="the one GPU worker the VO allows")
        pending = cluster.details()["pools"]["local"]
        assert pending["running"] + pending["pending"] == 1
