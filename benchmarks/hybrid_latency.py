"""Time to first worker and to N workers: hybrid vs HTCondor-only vs pods-only.

Pods start fast but the Kubernetes allocation is small (a node with room for
``--pod-slots`` workers); HTCondor jobs start slowly (``--job-latency`` seconds
idle in the schedd) but the pool is large. Runs the three configurations side
by side, alternating, on the real control plane with the process kubelet (pod
start delay ``--pod-latency``) and the schedd stand-in, and prints medians.
"pods, spawn" is "pods only" with the worker start of f3507a4 (the nanny spawns
a new interpreter for its worker instead of forking it:
``KubernetesLauncher.nanny_start_method = "spawn"``), and "pods, dashboard" is
"pods only" with each worker pod serving its own dashboard (the default before
``KubernetesLauncher.worker_dashboard``), for the ratios.

    python benchmarks/hybrid_latency.py [--workers 8] [--pod-slots 4] [--reps 3]
                                        [--only "pods only;pods, dashboard"]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Gateways
from tests.e2e.test_kubernetes import K8sGateway, hybrid_config
from tests.fakes.schedd import start_standin
from tests.k8s.harness import KubeEnv


def measure(k: K8sGateway, n: int, timeout: float) -> tuple[float, float | None, int]:
    """Seconds to the first worker, to n workers (None if never), and workers reached."""
    t0 = time.perf_counter()
    cluster = k.gw.new_cluster()
    cluster.scale(n)  # timed from the scale request, the cluster already running
    t0 = time.perf_counter()
    first = full = None
    reached = 0
    while time.perf_counter() - t0 < timeout:
        reached = len(cluster.scheduler_info.get("workers", {}))
        if reached and first is None:
            first = time.perf_counter() - t0
        if reached >= n:
            full = time.perf_counter() - t0
            break
        time.sleep(0.05)
    if full is None:
        pools = k.gw.cluster_details(cluster.name)["pools"]
        print(f"  not all workers joined; pools: {pools}", file=sys.stderr, flush=True)
    cluster.shutdown()
    return first or float("nan"), full, reached


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--pod-slots", type=int, default=4)
    parser.add_argument("--pod-latency", type=float, default=1.0)
    parser.add_argument("--job-latency", type=float, default=8.0)
    parser.add_argument("--burst-after", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=40.0)
    parser.add_argument(
        "--only",
        help="semicolon-separated configurations to run (default: all); ratios need "
        "'pods only' with 'pods, spawn' / 'pods, dashboard', and 'HTCondor only'",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="eg-hybrid-bench-"))
    env = KubeEnv().start()
    gateways = Gateways(root)  # a state directory per gateway
    made: list[K8sGateway] = []
    try:
        with start_standin(
            root / "condor", slots=4 * args.workers, start_latency=args.job_latency, tick=0.5
        ) as (factory, _control):
            n, slots = args.workers, args.pod_slots
            configs: dict[str, dict] = {
                "pods only": {"pods": {"launcher": "kubernetes"}},
                "pods, spawn": {"pods": {"launcher": "kubernetes"}},
                "pods, dashboard": {"pods": {"launcher": "kubernetes"}},
                "HTCondor only": {"condor": {"launcher": "htcondor"}},
                # The admin caps the pod pool at what the allocation holds: spill at once.
                "hybrid, capped": {
                    "pods": {"launcher": "kubernetes", "max_workers": slots},
                    "condor": {"launcher": "htcondor"},
                },
                # No cap: pods that stay unschedulable move after burst_after.
                "hybrid, burst": {
                    "pods": {"launcher": "kubernetes", "burst_after": args.burst_after},
                    "condor": {"launcher": "htcondor"},
                },
            }
            if args.only:
                chosen = [name.strip() for name in args.only.split(";")]
                unknown = set(chosen) - set(configs)
                if unknown:
                    parser.error(f"--only: unknown {sorted(unknown)}; choose from {list(configs)}")
                configs = {name: configs[name] for name in chosen}
            runs = {}
            for name, pools in configs.items():
                tmp = root / name.replace(",", "").replace(" ", "-")
                tmp.mkdir()
                k = K8sGateway(env, gateways, tmp)
                made.append(k)
                # The node fits the scheduler (1 core) and `slots` one-core worker pods.
                extra = hybrid_config(pools, factory, tmp)
                if name == "pods, spawn":
                    extra += 'c.KubernetesLauncher.nanny_start_method = "spawn"\n'
                if name == "pods, dashboard":
                    extra += "c.KubernetesLauncher.worker_dashboard = True\n"
                runs[name] = k.start(cpu=str(1 + slots), start_delay=args.pod_latency, extra=extra)
            results: dict[str, list] = {name: [] for name in configs}
            for rep in range(args.reps):
                order = list(configs) if rep % 2 == 0 else list(reversed(configs))
                for name in order:
                    first, full, reached = measure(runs[name], n, args.timeout)
                    results[name].append((first, full, reached))
                    shown = f"{full:6.2f} s" if full is not None else f"never ({reached}/{n})"
                    print(
                        f"rep {rep + 1} {name:<15} first {first:5.2f} s  all {n}: {shown}",
                        flush=True,
                    )

        print(
            f"\nMedians over {args.reps} runs: {n} workers; node room for {slots} pods "
            f"(start {args.pod_latency:g} s); HTCondor jobs idle {args.job_latency:g} s; "
            f"burst_after {args.burst_after:g} s"
        )

        def median_full(rows: list) -> float | None:
            fulls = [r[1] for r in rows if r[1] is not None]
            return statistics.median(fulls) if len(fulls) == len(rows) else None

        base = results.get("HTCondor only")
        base_first = statistics.median(r[0] for r in base) if base else None
        base_full = median_full(base) if base else None
        print(f"{'':<16}{'first worker':>14}{f'all {n} workers':>18}   ratio to HTCondor only")
        for name, rows in results.items():
            first = statistics.median(r[0] for r in rows)
            full = median_full(rows)
            if full is None:
                shown = f"{'never (max ' + str(max(r[2] for r in rows)) + ')':>18}"
            else:
                shown = f"{full:>16.2f} s"
            ratios = f"first {first / base_first:.2f}" if base_first else ""
            if ratios and full is not None and base_full:
                ratios += f", all {full / base_full:.2f}"
            print(f"{name:<16}{first:>12.2f} s{shown}   {ratios}")
        first = {name: statistics.median(r[0] for r in rows) for name, rows in results.items()}
        new = first.get("pods only")
        for other, what in (("pods, spawn", "spawn (f3507a4)"), ("pods, dashboard", "dashboard")):
            if new is not None and other in first:
                old = first[other]
                print(
                    f"first pod worker, now / {what}: {new:.2f} s / {old:.2f} s = {new / old:.2f}"
                )
        return 0
    finally:
        for k in made:
            k.close()
        gateways.teardown()
        env.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
