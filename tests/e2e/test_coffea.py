"""coffea's Runner with DaskExecutor, unchanged, on a cluster from the gateway."""

from __future__ import annotations

import sys

import pytest

from ..conftest import wait_for

pytestmark = pytest.mark.e2e

awkward = pytest.importorskip("awkward")
uproot = pytest.importorskip("uproot")
hist = pytest.importorskip("hist")
processor = pytest.importorskip("coffea.processor")


class MuonPt(processor.ProcessorABC):
    """Muon transverse momentum, as an analysis would histogram it."""

    def process(self, events):
        h = hist.Hist.new.Reg(20, 0, 100, name="pt").Double()
        h.fill(pt=awkward.flatten(events.Muon.pt))
        return {"pt": h, "events": len(events)}

    def postprocess(self, accumulator):
        return accumulator


def write_events(path, n=20_000, seed=7):
    import numpy as np

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, n)
    pt = awkward.unflatten(rng.exponential(20, counts.sum()) + 5, counts)
    with uproot.recreate(path) as f:
        f["Events"] = {"Muon": awkward.zip({"pt": pt})}
    return int(awkward.sum(pt < 100))


def test_coffea_runner_with_dask_executor_runs_on_gateway_workers(gw, tmp_path):
    import cloudpickle
    from coffea.nanoevents import BaseSchema

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import tests/
    path = str(tmp_path / "events.root")
    in_range = write_events(path)

    cluster = gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: len(cluster.scheduler_info.get("workers", {})) == 2, what="2 workers")
    client = cluster.get_client()
    runner = processor.Runner(
        executor=processor.DaskExecutor(client=client, status=False),
        schema=BaseSchema,
        chunksize=2_000,
    )
    out = runner({"data": {"files": {path: "Events"}}}, processor_instance=MuonPt())
    assert out["events"] == 20_000
    assert out["pt"].sum() == in_range
    client.close()
    cluster.shutdown()
