"""Reasons and logs of HTCondor workers, end to end on the schedd stand-in.

A job held for memory (as an execute point's policy holds it): the analyst reads the
HoldReason in memory words in ``details()`` within seconds, and the worker's output, which
the job brought back, through ``cluster.logs()`` after the job is gone.
"""

from __future__ import annotations

import htcondor2
import pytest

from ..conftest import wait_for, workers_of
from . import test_htcondor
from .test_htcondor import needs_standin

pytestmark = pytest.mark.e2e

make_pool = test_htcondor.make_pool  # the stand-in schedd and a gateway using it

HOLD_REASON = "Job has gone over memory limit of 256 megabytes. Peak usage: 300 megabytes."


def _event_with(gw, name: str, *parts: str) -> str | None:
    for event in gw.cluster_details(name)["events"]:
        if all(p in event["message"] for p in parts):
            return event["message"]
    return None


@needs_standin
def test_a_job_held_for_memory_shows_the_hold_reason_and_keeps_the_workers_log(make_pool):
    pool = make_pool()
    cluster = pool.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, what="1 HTCondor worker")
    client = cluster.get_client()
    assert client.submit(lambda: print("the job task's marker line", flush=True) or 1).result()
    [info] = cluster.scheduler_info["workers"].values()
    name = str(info["name"])

    pool.schedd.act(htcondor2.JobAction.Hold, f'DaskGatewayWorker == "{name}"', HOLD_REASON)

    message = wait_for(
        lambda: _event_with(pool.gw, cluster.name, f"worker {name}", "job held"),
        timeout=20,
        what="the hold reason in details()",
    )
    # HTCondor appends who held a job by hand ("(by user root)").
    assert f"job held: killed for exceeding its memory limit ({HOLD_REASON} (by user" in message
    assert "worker_memory" in message
    ended = pool.gw.cluster_details(cluster.name)["ended_workers"]
    assert [(e["worker"], e["pool"]) for e in ended] == [(name, "condor")]
    wait_for(lambda: not pool.jobs(f'DaskGatewayWorker == "{name}"'), what="the held job gone")
    assert "the job task's marker line" in cluster.logs(worker=name)[name]
    client.close()
    cluster.shutdown()
