"""HTCondor launcher cost per status period, by number of clusters, on the schedd stand-in.

For 10, 100 and 1000 clusters x 20 workers (jobs kept idle: no slots, so no
processes), counts the schedd calls one status period makes (target: constant,
1 query + 1 lease edit) and the gateway-side CPU seconds it costs, including
answering every worker's status check from the cache. Then the submit cost of
scale(+100): target one transaction.

    python benchmarks/htcondor_reconcile.py [--sizes 10,100,1000] [--workers 20]
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
from gateway_backend.launchers.htcondor import HTCondorLauncher
from tests.fakes.schedd import start_standin

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


class FakeWorker(SimpleNamespace):
    def is_active(self) -> bool:
        return True


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


def make_cluster(n_workers: int):
    cluster = SimpleNamespace(
        name=uuid.uuid4().hex,
        username="bench",
        token="not-used",
        config=CONFIG,
        tls_cert=b"cert",
        tls_key=b"key",
        workers={},
    )
    for _ in range(n_workers):
        w = FakeWorker(name=uuid.uuid4().hex, cluster=cluster, state={})
        cluster.workers[w.name] = w
    return cluster


async def measure(launcher, records, control, n_clusters: int, n_workers: int) -> dict:
    for _ in range(n_clusters):
        cluster = make_cluster(n_workers)
        records.clusters.append(cluster)
        workers = list(cluster.workers.values())
        states = await launcher.start_workers(cluster, workers, ClusterFacts())
        for w, s in zip(workers, states, strict=True):
            w.state = s
    all_workers = [w for c in records.clusters for w in c.workers.values()]
    await launcher.refresh()  # warm
    control.reset_counters()
    periods = 3
    cpu = wall = 0.0
    for _ in range(periods):
        c0, t0 = time.process_time(), time.perf_counter()
        await launcher.refresh()
        checks = await launcher.check_workers(all_workers)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - t0
    assert all(c.phase.value == "pending" for c in checks), "all jobs should be idle"
    counts = control.counters()
    return {
        "jobs": len(all_workers),
        "query": counts["query"] / periods,
        "edit": counts["edit"] / periods,
        "act": counts["act"] / periods,
        "submit": counts["submit"] / periods,
        "cpu": cpu / periods,
        "wall": wall / periods,
    }


async def run(sizes: list[int], n_workers: int, tmp: Path) -> None:
    print(
        f"{'clusters':>9}{'jobs':>8}{'query':>7}{'edit':>6}{'act':>5}{'submit':>8}"
        f"{'gateway CPU/period':>20}{'wall/period':>13}"
    )
    base = None
    for size in sizes:
        with start_standin(tmp / f"s{size}", slots=0, tick=60, client_timeout=120) as (
            factory,
            control,
        ):
            records = Records()
            launcher = HTCondorLauncher(
                schedd_factory=factory,
                scheduler_address="tls://127.0.0.1:1",
                staging_directory=str(tmp / f"staging{size}"),
                status_period=3600,  # periods are driven by hand here
                schedd_timeout=120,
            )
            await launcher.setup(records.context(launcher))
            try:
                r = await measure(launcher, records, control, size, n_workers)
            finally:
                await launcher.cleanup()
        base = base or r
        print(
            f"{size:>9}{r['jobs']:>8}{r['query']:>7.0f}{r['edit']:>6.0f}{r['act']:>5.0f}"
            f"{r['submit']:>8.0f}{r['cpu'] * 1e3:>16.1f} ms{r['wall'] * 1e3:>10.1f} ms"
        )
    print(
        f"\nschedd calls per period stay {base['query']:.0f} query + {base['edit']:.0f} edit "
        "whatever the number of clusters; CPU grows with the jobs parsed, not the clusters."
    )

    with start_standin(tmp / "scale", slots=0, tick=60) as (factory, control):
        records = Records()
        launcher = HTCondorLauncher(
            schedd_factory=factory,
            scheduler_address="tls://127.0.0.1:1",
            staging_directory=str(tmp / "staging-scale"),
            status_period=3600,
        )
        await launcher.setup(records.context(launcher))
        try:
            cluster = make_cluster(100)
            records.clusters.append(cluster)
            control.reset_counters()
            t0 = time.perf_counter()
            await launcher.start_workers(cluster, list(cluster.workers.values()), ClusterFacts())
            elapsed = time.perf_counter() - t0
            counts = control.counters()
        finally:
            await launcher.cleanup()
    print(
        f"scale(+100): {counts['submit']} submit transaction(s) of "
        f"{counts['submit_procs']} procs in {elapsed * 1e3:.0f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--workers", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eg-htc-bench-") as tmp:
        asyncio.run(run([int(s) for s in args.sizes.split(",")], args.workers, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
