"""A Slurm worker's log is its array task's output file, kept after the worker stopped."""

from __future__ import annotations

import pytest

from ..conftest import wait_for, workers_of
from ..slurm.fixtures import slurm_fixture  # noqa: F401 (the session's Slurm daemons)
from . import test_slurm

pytestmark = pytest.mark.e2e

make_pool = test_slurm.make_pool  # a gateway with a Slurm pool on those daemons


def test_a_slurm_workers_output_is_its_log_also_after_it_was_scaled_away(make_pool, slurm):
    pool = make_pool(slurm.transport_config("cli"))
    cluster = pool.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 Slurm worker")
    client = cluster.get_client()
    assert client.submit(lambda: print("the array task's marker line", flush=True) or 1).result()
    [info] = cluster.scheduler_info["workers"].values()
    name = str(info["name"])

    cluster.scale(0)
    wait_for(lambda: not pool.tasks(cluster.name), timeout=60, what="the worker's job gone")

    logs = cluster.logs(worker=name)
    assert "the array task's marker line" in logs[name]
    assert "Starting Worker" in logs[name]
    client.close()
    cluster.shutdown()
