"""Slurm launcher cost per status period, by number of clusters, on real Slurm daemons.

Starts the tests' one-node Slurm (``tests/slurm``), drains its node so every job
stays pending, and for 10, 100 and 1000 clusters x ``--workers`` workers counts
the Slurm commands one status period of ``SlurmLauncher`` makes (target: one
``squeue`` whatever the number of clusters) and its wall time, side by side with
one status call per cluster (``squeue --jobs=<cluster's job>``, as a backend
that tracks each cluster on its own would). Then the submit cost of scale(+100):
one ``sbatch`` job array against one ``sbatch`` per worker.

    python benchmarks/slurm_status.py [--sizes 10,100,1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from dask_gateway_server.utils import FrozenAttrDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway_backend.launchers import ClusterFacts, KnownRecords, LauncherContext
from gateway_backend.launchers.slurm import SlurmLauncher
from tests.slurm.harness import SlurmHarness

CONFIG = FrozenAttrDict(
    {
        "worker_cmd": ["dask", "worker"],
        "worker_cores": 1,
        "worker_threads": 1,
        "worker_memory": 2**30,
        "worker_gpus": 0,
        "environment": {},
    }
)


class Records:
    """The clusters the gateway would have records of, as the launcher's context reads them."""

    def __init__(self) -> None:
        self.clusters: list = []

    def known(self) -> KnownRecords:
        return KnownRecords(
            frozenset(c.name for c in self.clusters),
            frozenset(w for c in self.clusters for w in c.workers),
        )

    def context(self, launcher) -> LauncherContext:
        return LauncherContext(
            api_url="http://127.0.0.1:9/api",
            heartbeat_period=5,
            proxy_tls_address="127.0.0.1:1",
            known_records=self.known,
            add_event=lambda *args, **kwargs: None,
            scheduler_launcher=launcher,
            name="benchmark",
        )


def make_cluster(n_workers: int) -> SimpleNamespace:
    cluster = SimpleNamespace(
        name=uuid.uuid4().hex,
        username="bench",
        config=CONFIG,
        tls_cert=b"cert",
        tls_key=b"key",
        workers={},
    )
    for _ in range(n_workers):
        w = SimpleNamespace(name=uuid.uuid4().hex, cluster=cluster, state={})
        cluster.workers[w.name] = w
    return cluster


def launcher_for(
    harness: SlurmHarness, tmp: Path, gateway_id: str, query: str = "fields"
) -> SlurmLauncher:
    return SlurmLauncher(
        slurm_conf=str(harness.conf),
        scheduler_address="tls://127.0.0.1:1",
        staging_directory=str(tmp / gateway_id),
        gateway_id=gateway_id,
        status_period=3600,  # periods are driven by hand here
        command_timeout=120,
        status_query=query,
    )


async def measure(harness: SlurmHarness, tmp: Path, n_clusters: int, n_workers: int) -> dict:
    records = Records()
    launcher = launcher_for(harness, tmp, f"bench-{n_clusters}")
    await launcher.setup(records.context(launcher))
    try:
        for _ in range(n_clusters):
            cluster = make_cluster(n_workers)
            records.clusters.append(cluster)
            workers = list(cluster.workers.values())
            states = await launcher.start_workers(cluster, workers, ClusterFacts())
            for w, s in zip(workers, states, strict=True):
                w.state = s
        all_workers = [w for c in records.clusters for w in c.workers.values()]
        await launcher.refresh()  # warm
        periods = 3
        calls0, t0 = launcher.client.calls, time.perf_counter()
        for _ in range(periods):
            launcher.renew_leases(records.known().clusters)
            await launcher.refresh()
            checks = await launcher.check_workers(all_workers)
        ours = (time.perf_counter() - t0) / periods
        our_calls = (launcher.client.calls - calls0) / periods
        assert all(c.phase.value == "pending" for c in checks), "all jobs should be pending"
        assert len(launcher.jobs) == len(all_workers)

        # The same period with ``status_query = "json"``.
        launcher.client.query = "json"
        t0 = time.perf_counter()
        for _ in range(periods):
            await launcher.refresh()
        json_wall = (time.perf_counter() - t0) / periods
        assert len(launcher.jobs) == len(all_workers)

        # One call per cluster: squeue for the cluster's job, as per-cluster tracking does.
        calls0, t0 = launcher.client.calls, time.perf_counter()
        for cluster in records.clusters:
            job = next(iter(cluster.workers.values())).state["job_id"].split("_")[0]
            await launcher.client.run("squeue", "--noheader", f"--jobs={job}", "--format=%i %T")
        theirs = time.perf_counter() - t0
        their_calls = launcher.client.calls - calls0
        return {
            "jobs": len(all_workers),
            "our_calls": our_calls,
            "ours": ours,
            "json": json_wall,
            "their_calls": their_calls,
            "theirs": theirs,
        }
    finally:
        await launcher.cleanup()
        harness.run("scancel", f"--name={launcher.gateway_id}", check=False)


async def submit_cost(harness: SlurmHarness, tmp: Path, n: int = 100) -> tuple[float, float]:
    records = Records()
    launcher = launcher_for(harness, tmp, "bench-scale")
    await launcher.setup(records.context(launcher))
    try:
        cluster = make_cluster(n)
        records.clusters.append(cluster)
        workers = list(cluster.workers.values())
        t0 = time.perf_counter()
        await launcher.start_workers(cluster, workers, ClusterFacts())
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        for w in workers:  # one sbatch per worker
            await launcher.start_workers(cluster, [w], ClusterFacts())
        theirs = time.perf_counter() - t0
        return ours, theirs
    finally:
        await launcher.cleanup()
        harness.run("scancel", f"--name={launcher.gateway_id}", check=False)


async def run(harness: SlurmHarness, sizes: list[int], n_workers: int, tmp: Path) -> None:
    print(
        f"{'clusters':>9}{'tasks':>7} | {'gateway: calls':>14}{'wall/period':>13}"
        f"{'(json)':>11} | {'per cluster: calls':>18}{'wall/period':>13} | "
        f"{'calls ratio':>11}{'wall ratio':>11}"
    )
    for size in sizes:
        r = await measure(harness, tmp, size, n_workers)
        print(
            f"{size:>9}{r['jobs']:>7} | {r['our_calls']:>14.0f}{r['ours'] * 1e3:>10.1f} ms"
            f"{r['json'] * 1e3:>8.1f} ms | {r['their_calls']:>18}{r['theirs'] * 1e3:>10.1f} ms | "
            f"{r['our_calls'] / r['their_calls']:>11.4f}{r['ours'] / r['theirs']:>11.3f}"
        )
    ours, theirs = await submit_cost(harness, tmp)
    print(
        f"\nscale(+100): one sbatch (job array of 100) {ours * 1e3:.0f} ms; "
        f"100 sbatch (one per worker) {theirs * 1e3:.0f} ms; ratio {ours / theirs:.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    harness = SlurmHarness()
    try:
        harness.start()
        # Every job stays pending, on a drained node.
        harness.run("scontrol", "update", f"NodeName={harness.host}", "State=DRAIN", "Reason=bench")
        with tempfile.TemporaryDirectory(prefix="eg-slurm-bench-") as tmp:
            sizes = [int(s) for s in args.sizes.split(",")]
            asyncio.run(run(harness, sizes, args.workers, Path(tmp)))
    finally:
        harness.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
