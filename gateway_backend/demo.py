"""``elastic-gateway demo``: the whole product on one machine, end to end.

Starts the embedded gateway, creates a cluster through ``client_ext``, scales
it, opens its Dask dashboard once through the gateway proxy, runs a small
columnar analysis (a dimuon invariant-mass histogram over synthetic events,
chunked across workers), prints the result and timings, and shuts everything
down.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .embedded import GatewayProcess

Z_MASS = 91.19
N_CHUNKS = 16
EVENTS_PER_CHUNK = 200_000
BINS = np.linspace(60.0, 120.0, 61)


def dimuon_histogram(seed: int, n_events: int = EVENTS_PER_CHUNK) -> np.ndarray:
    """Histogram of dimuon masses for one chunk of synthetic events (Z peak on a falling tail)."""
    rng = np.random.default_rng(seed)
    n_signal = n_events // 3
    mass = np.concatenate(
        [
            Z_MASS + 2.5 * rng.standard_cauchy(n_signal).clip(-20, 20) / 2,
            60.0 + rng.exponential(25.0, n_events - n_signal),
        ]
    )
    # Build columnar muon pairs with that mass and random boosts, then recompute
    # the invariant mass from the four-vectors, as an analysis would.
    pt = rng.exponential(20.0, n_events) + 5.0
    eta = rng.normal(0.0, 1.2, n_events)
    phi = rng.uniform(-np.pi, np.pi, n_events)
    half = mass / 2
    p1 = np.stack([half, half * np.cos(phi), half * np.sin(phi), np.zeros(n_events)])
    p2 = np.stack([half, -p1[1], -p1[2], np.zeros(n_events)])
    boost_pz = pt * np.sinh(eta)
    total_e = np.sqrt(mass**2 + boost_pz**2)
    gamma, beta = total_e / mass, boost_pz / total_e
    for p in (p1, p2):
        e, pz = p[0].copy(), p[3].copy()
        p[0], p[3] = gamma * (e + beta * pz), gamma * (pz + beta * e)
    pair = p1 + p2
    m = np.sqrt(np.maximum(pair[0] ** 2 - pair[1] ** 2 - pair[2] ** 2 - pair[3] ** 2, 0))
    counts, _ = np.histogram(m, bins=BINS)
    return counts


def _progress(cluster, target: int, timeout: float = 180.0) -> float:
    """Show workers coming up until ``target`` run; returns the seconds it took."""
    start = time.monotonic()
    shown = None
    while True:
        running = len(cluster.scheduler_info.get("workers", {}))
        if running != shown:
            bar = "#" * running + "." * max(0, target - running)
            print(f"\r  workers [{bar}] {running}/{target}", end="", flush=True)
            shown = running
        if running >= target:
            print()
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            print()
            raise TimeoutError(f"only {running} of {target} workers started in {timeout:.0f}s")
        time.sleep(0.1)


def fetch_dashboard(link: str | None, headers: dict[str, str]) -> tuple[bool, str]:
    """Open the dashboard page once, as the analyst's browser would: (answered, what happened).

    A missing dashboard (no bokeh in the scheduler's environment, no proxy route) then
    shows up in the demo, not first in someone's notebook.
    """
    if not link:
        return False, "the gateway reported no dashboard for the cluster"
    request = urllib.request.Request(link, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, body = resp.status, resp.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as err:
        return False, f"no answer: {err}"
    if status != 200 or "Bokeh.embed" not in body:
        return False, f"answered {status} without the Bokeh dashboard (bokeh missing?)"
    return True, f"answered {status}, the Bokeh status page ({len(body) / 1024:.0f} KiB)"


def run_demo(n_workers: int = 4, keep_state: bool = False) -> int:
    from client_ext import ElasticGateway

    state_dir = Path(tempfile.mkdtemp(prefix="elastic-gateway-demo-"))
    gateway = GatewayProcess(state_dir)
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        print(f"Starting the embedded gateway (state in {state_dir}) ...", flush=True)
        gateway.start()
        timings["gateway start"] = time.monotonic() - t0
        creds = gateway.client_credentials()
        from dask_gateway import BasicAuth

        with ElasticGateway(
            gateway.address, auth=BasicAuth(creds["username"], creds["password"])
        ) as gw:
            t0 = time.monotonic()
            cluster = gw.new_cluster()
            timings["cluster start"] = time.monotonic() - t0
            print(f"Cluster {cluster.name} is running; scaling to {n_workers} workers")
            t0 = time.monotonic()
            cluster.scale(n_workers)
            _progress(cluster, n_workers)
            timings[f"scale 0 -> {n_workers}"] = time.monotonic() - t0
            headers, _ = gw.auth.pre_request(None)
            dashboard_ok, dashboard = fetch_dashboard(cluster.dashboard_link, headers)
            print(f"Dashboard: {cluster.dashboard_link}")
            print(f"  opened once through the gateway proxy: {dashboard}")

            client = cluster.get_client()
            t0 = time.monotonic()
            futures = client.map(dimuon_histogram, range(N_CHUNKS))
            total = client.submit(sum, futures).result()
            timings["analysis"] = time.monotonic() - t0
            used = sorted({w for ws in client.who_has(futures).values() for w in ws})
            client.close()

            peak = 0.5 * (BINS[:-1] + BINS[1:])[int(np.argmax(total))]
            print(
                f"Dimuon mass histogram over {N_CHUNKS * EVENTS_PER_CHUNK:,} events on "
                f"{len(used)} workers: {int(total.sum()):,} pairs in 60-120 GeV, "
                f"peak at {peak:.1f} GeV (Z boson: {Z_MASS} GeV)"
            )
            # The gateway learns that workers joined at the scheduler's next heartbeat.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                pools = cluster.pool_summary()
                if sum(p["running"] for p in pools.values()) >= n_workers:
                    break
                time.sleep(0.25)
            print(f"Workers per pool, as the gateway sees them: {pools}")
            t0 = time.monotonic()
            cluster.shutdown()
            timings["cluster shutdown"] = time.monotonic() - t0
        gateway.stop()
        leftovers = gateway.leftover_processes()
        print("Timings:")
        for name, seconds in timings.items():
            print(f"  {name:<18} {seconds:6.2f} s")
        if abs(peak - Z_MASS) > 3:
            print(f"FAILED: the peak at {peak:.1f} GeV is not the Z", file=sys.stderr)
            return 1
        if leftovers:
            print(f"FAILED: {len(leftovers)} processes outlived the gateway", file=sys.stderr)
            return 1
        if not dashboard_ok:
            print(f"FAILED: the dashboard {cluster.dashboard_link}: {dashboard}", file=sys.stderr)
            return 1
        print("Demo finished: everything was started, used and stopped.")
        return 0
    except Exception as exc:
        print(f"\nDemo failed: {exc}", file=sys.stderr)
        tail = gateway.log_tail()
        if tail and tail not in str(exc):  # start-up errors already carry the log
            print(f"Gateway log tail:\n{tail}", file=sys.stderr)
        return 1
    finally:
        gateway.kill()
        gateway.kill_leftovers()
        if not keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)
