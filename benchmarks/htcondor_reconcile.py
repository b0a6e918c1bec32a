"""HTCondor launcher cost per status period, by number of clusters, on the schedd stand-in.

For 10, 100 and 1000 clusters x 20 workers (jobs kept idle: no slots, so no
processes), counts the schedd calls one status period makes (target: constant,
1 query + 1 lease edit) and the gateway-side CPU seconds it costs, including
answering every worker's status check from the cache. The launcher of commit
f3507a4 (every period parses every job, on the event loop: "old") runs on the
same schedd in the same run, alternating with today's, which asks only for
changed jobs between full queries ("new": steady, with 1% of the jobs changing
status in the period, and a full query), so the ratios are measured side by
side. Then the submit cost of scale(+100): target one transaction.

    python benchmarks/htcondor_reconcile.py [--sizes 10,100,1000] [--workers 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from dask_gateway_server.utils import FrozenAttrDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway_backend.launchers import (
    Check,
    ClusterFacts,
    KnownRecords,
    LauncherContext,
    Phase,
)
from gateway_backend.launchers.htcondor import HTCondorLauncher
from gateway_backend.launchers.htcondor_status import parse_ads
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


OLD_PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "DaskGatewayCluster",
    "DaskGatewayWorker",
    "HoldReason",
    "EnteredCurrentStatus",
    "LastRejMatchReason",
]


class OldLauncher(HTCondorLauncher):
    """``refresh`` and ``check_workers`` as of f3507a4: every job every period, ads read
    and checks made on the event loop."""

    async def refresh(self, known: KnownRecords | None = None) -> int:
        started = time.time()
        ads = await self._call("query", self._instance_constraint(), OLD_PROJECTION)
        jobs = {}
        for ad in ads:
            info = SimpleNamespace(
                job_id=f"{ad['ClusterId']}.{ad['ProcId']}",
                cluster=str(ad.get("DaskGatewayCluster", "")),
                worker=str(ad.get("DaskGatewayWorker", "")),
                status=int(ad.get("JobStatus", 1)),
                hold_reason=str(ad.get("HoldReason", ""))[:300],
                why_idle=str(ad.get("LastRejMatchReason", ""))[:300],
            )
            jobs[info.worker] = info
        self.jobs = jobs
        self.cache_time = started
        known = self.context.known_records() if known is None else known
        stray = [job.job_id for job in jobs.values() if job.worker not in known.workers]
        if stray:
            await self._remove(stray)
        if jobs:
            expires = int(time.time() + self.lease_duration)
            await self._call(
                "edit", self._instance_constraint(), "DaskGatewayLeaseExpires", str(expires)
            )
        return len(stray)

    async def check_workers(self, workers) -> list[Check]:
        out = []
        for w in workers:
            job = self.jobs.get(w.name)
            if job is None:
                submitted = w.state.get("submitted", 0)
                if self.cache_time <= submitted or self.schedd_error:
                    why = "waiting for the schedd to list the job"
                    if self.schedd_error:
                        why = f"schedd unreachable ({self.schedd_error})"
                    out.append(Check(Phase.PENDING, why))
                else:
                    reason = "the job left the schedd queue" + self._why(w)
                    out.append(Check(Phase.FAILED, reason))
            elif job.status == 5:
                out.append(Check(Phase.FAILED, f"job held: {job.hold_reason}"))
            elif job.status in (3, 4):
                out.append(Check(Phase.FAILED, "the job ended" + self._why(w)))
            elif job.status == 2:
                out.append(Check(Phase.RUNNING))
            else:
                why = "idle in the schedd queue, waiting for a slot"
                if job.why_idle:
                    why += f" ({job.why_idle})"
                out.append(Check(Phase.PENDING, why))
        return out


async def period_cost(launcher, workers, before=None) -> tuple[float, float, float]:
    """CPU seconds of one status period (the refresh and every worker's check), wall
    seconds, and the longest the event loop was blocked meanwhile (a 5 ms probe).

    Periods start a second apart at least (status_period is 5 s by default): the
    schedd's clock (ServerTime) has whole seconds, and jobs that changed in the
    second of the previous query are read again.
    """
    await asyncio.sleep(1.05)
    if before is not None:
        before()
    loop = asyncio.get_running_loop()
    blocked = 0.0
    done = False

    async def probe() -> None:
        nonlocal blocked
        while not done:
            t = loop.time()
            await asyncio.sleep(0.005)
            blocked = max(blocked, loop.time() - t - 0.005)

    task = asyncio.ensure_future(probe())
    await asyncio.sleep(0)
    c0, t0 = time.process_time(), time.perf_counter()
    await launcher.refresh()
    await launcher.check_workers(workers)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    done = True
    await task
    return cpu, wall, blocked


def hold_some(factory, workers, fraction: float, rng: random.Random) -> None:
    """Put ``fraction`` of the (still idle) jobs on hold: status changes in this period."""
    import htcondor2

    idle = [w for w in workers if not w.held]
    chosen = rng.sample(idle, max(1, int(len(workers) * fraction)))
    for w in chosen:
        w.held = True
    factory().act(htcondor2.JobAction.Hold, [w.state["job_id"] for w in chosen], "bench")


def cache_matches_schedd(launcher, factory) -> bool:
    """Whether the changes-only cache equals what a full query reads now."""
    from gateway_backend.launchers.htcondor_status import PROJECTION

    full = parse_ads(factory().query(launcher._instance_constraint(), PROJECTION)).jobs
    return {w: (j.job_id, j.status) for w, j in launcher.jobs.items()} == {
        w: (j.job_id, j.status) for w, j in full.items()
    }


async def measure(new, old, records, control, factory, n_clusters: int, n_workers: int) -> dict:
    for _ in range(n_clusters):
        cluster = make_cluster(n_workers)
        records.clusters.append(cluster)
        workers = list(cluster.workers.values())
        states = await new.start_workers(cluster, workers, ClusterFacts())
        for w, s in zip(workers, states, strict=True):
            w.state = s
            w.held = False
    all_workers = [w for c in records.clusters for w in c.workers.values()]
    for _ in range(2):  # warm: the first query is a full one, the second reads the last second
        await period_cost(new, all_workers)
        await old.refresh()
    control.reset_counters()
    rng = random.Random(1)
    rows: dict[str, list[tuple[float, float, float]]] = {
        k: [] for k in ("old", "steady", "1%", "full")
    }
    periods = 3
    for _ in range(periods):
        rows["old"].append(await period_cost(old, all_workers))
        rows["steady"].append(await period_cost(new, all_workers))
    counts = control.counters()
    for _ in range(periods):
        rows["1%"].append(
            await period_cost(new, all_workers, lambda: hold_some(factory, all_workers, 0.01, rng))
        )
        rows["old"].append(await period_cost(old, all_workers))

        def force_full() -> None:
            new._since = None

        rows["full"].append(await period_cost(new, all_workers, force_full))
    checks = await new.check_workers(all_workers)
    assert sum(c.phase.value == "failed" for c in checks) == sum(w.held for w in all_workers)
    out: dict = {k: (sum(r[0] for r in v) / len(v), max(r[2] for r in v)) for k, v in rows.items()}
    out.update(
        jobs=len(all_workers),
        # Counted over the first alternating periods: old + new steady, per launcher.
        query=counts["query"] / (2 * periods),
        edit=counts["edit"] / (2 * periods),
        consistent=cache_matches_schedd(new, factory),
    )
    return out


async def run(sizes: list[int], n_workers: int, tmp: Path, full_every: float) -> None:
    print("Gateway CPU per status period in ms (mean of 3 or 6 periods), and the longest")
    print("event-loop block in ms (max over them), old and new launcher on one schedd:")
    print(
        f"{'clusters':>9}{'jobs':>7}{'query':>6}{'edit':>5}"
        f"{'old':>9}{'new full':>10}{'new 1%':>9}{'new':>8}{'new/old':>9}"
        f"{'amortized':>11}{'/old':>6}{'block old':>11}{'new':>6}{'cache ok':>10}"
    )
    amortize = max(1.0, full_every)
    for size in sizes:
        with start_standin(tmp / f"s{size}", slots=0, tick=60, client_timeout=120) as (
            factory,
            control,
        ):
            records = Records()
            settings = dict(
                schedd_factory=factory,
                scheduler_address="tls://127.0.0.1:1",
                status_period=3600,  # periods are driven by hand here
                schedd_timeout=120,
            )
            new = HTCondorLauncher(staging_directory=str(tmp / f"new{size}"), **settings)
            old = OldLauncher(staging_directory=str(tmp / f"old{size}"), **settings)
            await new.setup(records.context(new))
            await old.setup(records.context(old))
            try:
                r = await measure(new, old, records, control, factory, size, n_workers)
            finally:
                await new.cleanup()
                await old.cleanup()
        ms = {k: r[k][0] * 1e3 for k in ("old", "steady", "1%", "full")}
        # A full query every `full_every` periods, 1% of the jobs changing in every other one.
        amortized = (ms["full"] + (amortize - 1) * ms["1%"]) / amortize
        block_new = max(r[k][1] for k in ("steady", "1%", "full")) * 1e3
        print(
            f"{size:>9}{r['jobs']:>7}{r['query']:>6.0f}{r['edit']:>5.0f}"
            f"{ms['old']:>9.1f}{ms['full']:>10.1f}{ms['1%']:>9.1f}{ms['steady']:>8.1f}"
            f"{ms['steady'] / ms['old']:>9.3f}{amortized:>11.1f}{amortized / ms['old']:>6.2f}"
            f"{r['old'][1] * 1e3:>11.0f}{block_new:>6.0f}{'yes' if r['consistent'] else 'NO':>10}"
        )
    print(
        "\nold: f3507a4, every job every period, read on the event loop. new: jobs changed since "
        "the last query, read in the schedd call's thread; 'new 1%': 1% of all jobs were held "
        f"in the period; 'new full': a full query; amortized: one full query every {amortize:g} "
        "periods (status_full_period / status_period, default 300 s / 5 s), 1% of the jobs "
        "changing in each other one. Schedd calls per period stay 1 query + 1 edit whatever "
        "the number of clusters."
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
    parser.add_argument("--full-every", type=float, default=60, help="periods per full query")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="eg-htc-bench-") as tmp:
        asyncio.run(run(sizes, args.workers, Path(tmp), args.full_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
