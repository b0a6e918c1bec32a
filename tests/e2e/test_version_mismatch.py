"""Client, scheduler and worker versions compared where they meet, with one clear message.

Real gateway, proxy, scheduler and workers. The profile's Python is a virtualenv
over this one's packages whose ``sitecustomize`` makes distributed *report*
another version (``distributed.versions.get_package_info``) in the scheduler,
the workers or both: what the check reads, without installing a second
distributed (offline, in seconds).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest
from distributed import __version__ as DISTRIBUTED
from distributed.versions import VersionMismatchWarning

from ..conftest import wait_for, workers_of
from .test_profiles import profiles_config

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OTHER = "2024.1.0"

SITECUSTOMIZE = f"""
import os
import distributed.versions as _versions

_real = _versions.get_package_info
_ROLES = {{"scheduler": "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT",
          "worker": "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT"}}

def get_package_info(pkgs):
    info = _real(pkgs)
    roles = os.environ.get("FAKE_DISTRIBUTED_ON", "").split(",")
    if any(_ROLES.get(role, "-") in os.environ for role in roles):
        info["distributed"] = {OTHER!r}
    return info

_versions.get_package_info = get_package_info
"""


@pytest.fixture(scope="module")
def odd_python(tmp_path_factory) -> str:
    """A virtualenv over this one's packages whose distributed reports ``OTHER``
    in the roles ``$FAKE_DISTRIBUTED_ON`` names (scheduler, worker)."""
    env = tmp_path_factory.mktemp("odd-env") / "odd"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "host-packages.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{REPO}\n")
    Path(site, "sitecustomize.py").write_text(SITECUSTOMIZE)
    return str(python)


def start(gateways, python: str, fake_on: str, mode: str = "warn", extra: str = ""):
    profiles = f'{{"odd": {{"python": {python!r}, "env": {{"FAKE_DISTRIBUTED_ON": {fake_on!r}}}}}}}'
    return gateways.start(
        profiles_config(profiles) + f"c.ElasticClusterConfig.version_mismatch = {mode!r}\n" + extra
    )


def status_of(gw, name: str) -> str:
    return gw.cluster_details(name)["status"]


def events_of(gw, name: str) -> list[str]:
    return [e["message"] for e in gw.cluster_details(name)["events"]]


def test_a_client_with_other_versions_is_warned_naming_them_and_what_to_do(gateways, odd_python):
    gw = gateways.client(start(gateways, odd_python, "scheduler,worker"))
    with gw.new_cluster() as cluster:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client = cluster.get_client()
        [warning] = [w.message for w in caught if isinstance(w.message, VersionMismatchWarning)]
        assert str(warning) == (
            f"Version mismatch (distributed {DISTRIBUTED} on the client but {OTHER} on the "
            "scheduler): the client was allowed, but tasks may fail to unpickle. To fix: pick "
            "the profile whose environment matches your notebook (gateway.profiles() lists "
            "them), or install the scheduler's versions in your notebook's environment."
        )
        cluster.scale(1)
        assert client.submit(lambda: 1 + 1).result(timeout=60) == 2  # warned, not refused
        wait_for(
            lambda: any(
                "version mismatch: a client was allowed" in m for m in events_of(gw, cluster.name)
            ),
            what="the event",
        )


def test_a_client_with_other_versions_is_refused_with_the_message_in_refuse_mode(
    gateways, odd_python
):
    gw = gateways.client(start(gateways, odd_python, "scheduler,worker", "refuse"))
    with gw.new_cluster() as cluster:
        with pytest.raises(ImportError) as refused:
            cluster.get_client()
        assert str(refused.value).startswith(
            f"Version mismatch (distributed {DISTRIBUTED} on the client but {OTHER} on the "
            "scheduler): the client was refused. To fix: pick the profile whose environment"
        )
        wait_for(
            lambda: any(
                m.startswith(
                    f"version mismatch: a client was refused (distributed {DISTRIBUTED} on "
                    f"the client but {OTHER} on the scheduler)"
                )
                for m in events_of(gw, cluster.name)
            ),
            what="the event",
        )


def test_a_worker_with_other_versions_joins_with_a_warning_event(gateways, odd_python):
    gw = gateways.client(start(gateways, odd_python, "worker"))
    with gw.new_cluster() as cluster:
        cluster.scale(1)
        client = cluster.get_client()  # the client and the scheduler agree: no warning
        wait_for(lambda: workers_of(cluster) == 1, what="the worker joining")
        assert client.submit(lambda: 2).result(timeout=60) == 2
        [event] = wait_for(
            lambda: [m for m in events_of(gw, cluster.name) if "version mismatch" in m],
            what="the event",
        )
        [worker] = cluster.scheduler_info["workers"].values()
        assert event == (
            f"version mismatch: worker {worker['name']} was allowed, but its tasks may fail to "
            f"unpickle (distributed {OTHER} on the worker but {DISTRIBUTED} on the scheduler); "
            "to fix: the workers' environment differs from the scheduler's: ask the "
            "administrators to fix the profile's image or Python environment, or pick another "
            "profile"
        )


def test_workers_with_other_versions_are_removed_and_fail_the_cluster_in_refuse_mode(
    gateways, odd_python
):
    # Replaced without waiting for a restart that will not come (they are refused each time).
    limit = (
        "c.ElasticBackend.worker_start_failure_limit = 2\n"
        "c.ElasticBackend.worker_restart_grace = 1\n"
    )
    gw = gateways.client(start(gateways, odd_python, "worker", "refuse", limit))
    with gw.new_cluster() as cluster:
        cluster.scale(1)
        wait_for(lambda: status_of(gw, cluster.name) == "FAILED", what="the cluster failing")
        details = gw.cluster_details(cluster.name)
        assert details["failure_reason"].startswith(
            "2 workers had other versions (limit ElasticBackend.worker_start_failure_limit); "
            "last: version mismatch: worker "
        )
        assert "was refused (distributed 2024.1.0 on the worker" in details["failure_reason"]
