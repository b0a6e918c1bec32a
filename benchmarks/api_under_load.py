"""The gateway API under many concurrent users, at 10, 50 and 100 live clusters.

One Elastic Gateway (``elastic-gateway serve``): real scheduler processes from the
local launcher (fork server), workers in an HTCondor pool on the schedd stand-in
with no slots (jobs stay idle: no worker processes). ``--users`` threads, one
keep-alive connection and one user each, on loopback through the proxy, first
create clusters until the level is reached and running, then for ``--seconds``
run a mix with think times: list clusters, read one, read its details, scale one
to 0-8 workers, read the quota, and churn (stop one, create another), so the
number of live clusters stays at the level. Reported per level: API latency
p50/p99 (all requests, and per kind), the gateway's event-loop lag (a probe
task inside the gateway sleeping 10 ms: max and p99 of its overshoot) and loop
busy (the CPU the loop's thread spent between two such ticks: the gateway's own
blocking work, whatever else competes for the cores), the gateway process's
CPU share and RSS, how busy the machine's cores were, and the slopes per live
cluster. On 2 cores, 100 idle schedulers alone keep the machine busy: there the
wall-clock figures measure CPU starvation, loop busy and gateway CPU the
gateway's own cost.

    python benchmarks/api_under_load.py [--levels 10,50,100] [--users 16] [--seconds 30]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway_backend.embedded import GatewayProcess
from tests.fakes.schedd import start_standin

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LAG_PERIOD = 0.01

CONFIG = """
import sys
sys.path.insert(0, {here!r})
sys.path.insert(0, {repo!r})
from api_under_load import probed
from tests.fakes.schedd.client import StandinSchedd
c.DaskGateway.backend_class = probed("gateway_backend.ElasticBackend", {lag_file!r})
c.LocalLauncher.single_user = ""
c.LocalLauncher.allow_shared_local_user = True  # benchmark users share one OS account
c.ElasticBackend.worker_pools = {{"condor": {{"launcher": "htcondor"}}}}
c.HTCondorLauncher.schedd_factory = lambda: StandinSchedd({socket!r}, timeout=30)
c.HTCondorLauncher.staging_directory = {staging!r}
c.HTCondorLauncher.schedd_timeout = 30
"""

# (kind, weight): what users do, by share of their requests.
MIX = [
    ("list", 40),
    ("get", 15),
    ("details", 10),
    ("scale", 20),
    ("quota", 5),
    ("churn", 4),
]


def probed(backend_path: str, lag_file: str) -> type:
    """``backend_path``'s class with an event-loop lag probe writing ``lag_file`` (JSON lines)."""
    import asyncio
    import importlib

    module, _, name = backend_path.rpartition(".")
    base = getattr(importlib.import_module(module), name)

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        fd = os.open(lag_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        window: list[float] = []
        busy: list[float] = []  # CPU the loop's thread spent between two ticks
        flushed = time.time()
        while True:
            t0, c0 = loop.time(), time.thread_time()
            await asyncio.sleep(LAG_PERIOD)
            window.append(loop.time() - t0 - LAG_PERIOD)
            busy.append(time.thread_time() - c0)
            if time.time() - flushed >= 0.5:
                flushed = time.time()
                line = json.dumps({"t": flushed, "lag": window, "busy": busy})
                os.write(fd, (line + "\n").encode())
                window, busy = [], []

    class Probed(base):  # type: ignore[misc, valid-type]
        async def setup(self, app) -> None:
            await super().setup(app)
            self._lag_probe = asyncio.ensure_future(probe())
            if os.environ.get("EG_BENCH_PROFILE"):  # where the gateway's CPU goes
                import cProfile

                profiler = cProfile.Profile(time.thread_time)  # CPU, not waits for one
                profiler.enable()

                async def dump() -> None:
                    while True:
                        await asyncio.sleep(5)
                        profiler.dump_stats(os.environ["EG_BENCH_PROFILE"])

                self._profile_dump = asyncio.ensure_future(dump())
            if os.environ.get("EG_BENCH_SLOW_CALLBACKS"):  # name what blocks the loop
                loop = asyncio.get_running_loop()
                loop.set_debug(True)
                loop.slow_callback_duration = float(os.environ["EG_BENCH_SLOW_CALLBACKS"])

    Probed.__name__ = f"Probed{name}"
    return Probed


class User:
    """One analyst: a keep-alive connection and their clusters."""

    def __init__(self, port: int, name: str, password: str, seed: int) -> None:
        self.port = port
        self.name = name
        token = base64.b64encode(f"{name}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.clusters: list[str] = []
        self.created: dict[str, float] = {}  # cluster -> when this user created it
        self.rng = random.Random(seed)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[float, dict]:
        data = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, body=data, headers=self.headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            raise
        elapsed = time.perf_counter() - t0
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {raw[:300]!r}")
        return elapsed, (json.loads(raw) if raw.strip() else {})

    def create(self) -> float:
        elapsed, answer = self.call("POST", "/api/v1/clusters/", {"cluster_options": {}})
        self.clusters.append(answer["name"])
        self.created[answer["name"]] = time.monotonic()
        return elapsed

    def stop(self, name: str) -> float:
        self.clusters.remove(name)
        return self.call("DELETE", f"/api/v1/clusters/{name}")[0]

    def one(self, kind: str) -> list[tuple[str, float]]:
        """One request of ``kind`` (churn is two), with its latency.

        Only clusters created 10 s ago or more are used: their scheduler runs.
        """
        now = time.monotonic()
        ready = [c for c in self.clusters if now - self.created.get(c, 0) > 10]
        name = self.rng.choice(ready) if ready else None
        if kind == "list" or name is None:
            return [("list", self.call("GET", "/api/v1/clusters/")[0])]
        if kind == "get":
            return [("get", self.call("GET", f"/api/v1/clusters/{name}")[0])]
        if kind == "details":
            return [("details", self.call("GET", f"/api/elastic/v1/clusters/{name}")[0])]
        if kind == "scale":
            body = {"count": self.rng.randint(0, 8)}
            return [("scale", self.call("POST", f"/api/v1/clusters/{name}/scale", body)[0])]
        if kind == "quota":
            return [("quota", self.call("GET", "/api/elastic/v1/quota")[0])]
        return [("stop", self.stop(name)), ("create", self.create())]


def idle_cpu_per_cluster(gw: GatewayProcess, level: int, seconds: float = 10) -> float:
    """Share of one core each live cluster's processes use with no request and no task:
    CPU time, so what else runs on the machine changes it little."""

    def cpu(procs: list[psutil.Process]) -> dict[int, float]:
        seen = {}
        for p in procs:
            try:
                seen[p.pid] = sum(p.cpu_times()[:2])
            except psutil.Error:
                continue
        return seen

    procs = gw.leftover_processes()
    before = cpu(procs)
    t0 = time.perf_counter()
    time.sleep(seconds)
    after = cpu(procs)
    used = sum(after[pid] - before[pid] for pid in after if pid in before)
    return used / (time.perf_counter() - t0) / level


def grow(users: list[User], level: int, timeout: float = 600) -> None:
    """Create clusters round-robin until ``level`` exist, then wait until all run."""
    have = sum(len(u.clusters) for u in users)
    need = level - have
    threads = []
    per = [need // len(users) + (1 if i < need % len(users) else 0) for i in range(len(users))]

    def make(u: User, k: int) -> None:
        for _ in range(k):
            u.create()

    for u, k in zip(users, per, strict=True):
        threads.append(threading.Thread(target=make, args=(u, k)))
        threads[-1].start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [
            c["status"] for u in users for c in u.call("GET", "/api/v1/clusters/")[1].values()
        ]
        if states.count("RUNNING") >= level:
            return
        time.sleep(1)
    raise TimeoutError(f"{level} clusters did not all run in {timeout:g}s: {sorted(states)}")


def workload(users: list[User], seconds: float, think: float) -> dict[str, list[float]]:
    kinds, weights = zip(*MIX, strict=True)
    times: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()
    errors: list[str] = []
    end = time.monotonic() + seconds

    def run(u: User) -> None:
        while time.monotonic() < end:
            time.sleep(u.rng.expovariate(1 / think))
            kind = u.rng.choices(kinds, weights)[0]
            try:
                results = u.one(kind)
            except Exception as exc:
                with lock:
                    errors.append(f"{kind}: {exc}")
                continue
            with lock:
                for k, t in results:
                    times[k].append(t)

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(f"  {len(errors)} failed requests, e.g. {errors[0]}", flush=True)
    return times


def renice_clusters(gateway: psutil.Process) -> None:
    """Nice 19 for every process the gateway started except its proxy (on the request path)."""
    for child in gateway.children(recursive=True):
        try:
            if "proxy" not in " ".join(child.cmdline()):
                child.nice(19)
        except psutil.Error:
            pass


def lags_between(lag_file: Path, t0: float, t1: float) -> tuple[list[float], list[float]]:
    """Loop lag (wall) and loop busy (the loop thread's CPU per tick) samples in [t0, t1]."""
    lag: list[float] = []
    busy: list[float] = []
    for line in lag_file.read_text().splitlines():
        row = json.loads(line)
        if t0 <= row["t"] <= t1 + 0.5:
            lag.extend(row["lag"])
            busy.extend(row["busy"])
    return lag, busy


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="10,50,100")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--think", type=float, default=0.3, help="mean seconds between requests")
    parser.add_argument(
        "--nice-clusters",
        action="store_true",
        help="renice the gateway's scheduler processes (and the fork server, whose children "
        "inherit it) to 19: on a small machine they no longer take the gateway's CPU, as "
        "schedulers on other nodes would not",
    )
    parser.add_argument(
        "--tick-intervals",
        default="0,0.5",
        help="ElasticClusterConfig.tick_interval of each run, side by side (0: distributed's "
        "20 ms; 0.5: the default)",
    )
    args = parser.parse_args()
    levels = [int(s) for s in args.levels.split(",")]
    runs = {}
    for tick in [float(t) for t in args.tick_intervals.split(",")]:
        print(f"--- cluster processes ticking every {tick_label(tick)}", flush=True)
        runs[tick] = run_levels(args, levels, tick)
    for tick, rows in runs.items():
        report(args, rows, tick)
    if len(runs) > 1:
        compare(runs)
    return 0


def tick_label(tick: float) -> str:
    return f"{tick:g} s" if tick else "20 ms (distributed's default)"


def run_levels(args: argparse.Namespace, levels: list[int], tick: float) -> list[tuple]:
    """One gateway, its clusters ticking every ``tick``, through every level; a row per level."""
    root = Path(tempfile.mkdtemp(prefix="eg-load-bench-"))
    gw = None
    rows = []
    try:
        with start_standin(root / "condor", slots=0, tick=5, client_timeout=30) as (factory, _c):
            lag_file = root / "lag.jsonl"
            cfg = root / "config.py"
            cfg.write_text(
                CONFIG.format(
                    here=str(HERE),
                    repo=str(REPO),
                    lag_file=str(lag_file),
                    socket=str(factory().socket_path),
                    staging=str(root / "staging"),
                )
                + f"c.ElasticClusterConfig.tick_interval = {tick!r}\n"
            )
            gw = GatewayProcess(root / "gateway", config_file=cfg).start()
            password = gw.client_credentials()["password"]
            proc = psutil.Process(gw.proc.pid)
            users = [User(gw.port, f"user{i}", password, i) for i in range(args.users)]
            base_rss = proc.memory_info().rss
            print(f"gateway RSS with no cluster: {base_rss / 2**20:.0f} MiB", flush=True)
            for level in levels:
                t_grow = time.perf_counter()
                grow(users, level)
                print(
                    f"{level} clusters running after {time.perf_counter() - t_grow:.0f} s; "
                    f"{args.users} users for {args.seconds:g} s...",
                    flush=True,
                )
                if args.nice_clusters:
                    renice_clusters(proc)
                idle = idle_cpu_per_cluster(gw, level)
                print(f"  idle: {idle:.2%} of a core per live cluster", flush=True)
                t0 = time.time()
                cpu0, machine0 = sum(proc.cpu_times()[:2]), psutil.cpu_times()
                times = workload(users, args.seconds, args.think)
                t1 = time.time()
                cpu = (sum(proc.cpu_times()[:2]) - cpu0) / (t1 - t0)
                machine1 = psutil.cpu_times()
                busy = 1 - (machine1.idle - machine0.idle) / (sum(machine1) - sum(machine0))
                lag, loop_busy = lags_between(lag_file, t0, t1)
                rss = proc.memory_info().rss
                jobs = len(factory().query("true", ["ClusterId"]))
                rows.append((level, times, lag, rss, jobs, cpu, busy, loop_busy, idle))
                every = [t for v in times.values() for t in v]
                print(
                    f"  {len(every)} requests ({len(every) / args.seconds:.0f}/s), p50 "
                    f"{pct(every, 50) * 1e3:.1f} ms, p99 {pct(every, 99) * 1e3:.1f} ms; loop lag "
                    f"max {max(lag) * 1e3:.0f} ms p99 {pct(lag, 99) * 1e3:.1f} ms, loop busy max "
                    f"{max(loop_busy) * 1e3:.0f} ms p99 {pct(loop_busy, 99) * 1e3:.1f} ms; RSS "
                    f"{rss / 2**20:.0f} MiB; {jobs} idle worker jobs; gateway CPU {cpu:.0%}, "
                    f"machine busy {busy:.0%}",
                    flush=True,
                )
            for u in users:
                for name in list(u.clusters):
                    u.stop(name)
    finally:
        if gw is not None:
            gw.stop()
            gw.kill_leftovers()
            if os.environ.get("EG_BENCH_SLOW_CALLBACKS"):
                slow = [line for line in gw.log_tail(10**7).splitlines() if " took " in line]
                print("\n".join(["slow callbacks:", *slow[-40:]]))
        shutil.rmtree(root, ignore_errors=True)

    return rows


def report(args: argparse.Namespace, rows: list[tuple], tick: float) -> None:
    niced = ", cluster processes at nice 19" if args.nice_clusters else ""
    print(
        f"\nAPI under load: {args.users} users on loopback through the proxy, mean think time "
        f"{args.think:g} s, {args.seconds:g} s per level, {os.cpu_count()} cores{niced}; "
        f"cluster processes tick every {tick_label(tick)}"
    )
    kinds = ["list", "get", "details", "scale", "quota", "create", "stop"]
    print(
        f"{'live':>5}{'req/s':>7}{'p50':>8}{'p99':>8}{'lag max':>9}{'lag p99':>9}{'RSS':>9}"
        f"{'gw CPU':>8}{'busy':>6}{'loop busy max':>15}{'p99':>7}{'idle/cluster':>14}"
        + "".join(f"{k + ' p99':>13}" for k in kinds)
    )
    for level, times, lag, rss, _jobs, cpu, busy, loop_busy, idle in rows:
        every = [t for v in times.values() for t in v]
        print(
            f"{level:>5}{len(every) / args.seconds:>7.0f}{pct(every, 50) * 1e3:>6.1f}ms"
            f"{pct(every, 99) * 1e3:>6.1f}ms{max(lag) * 1e3:>7.0f}ms{pct(lag, 99) * 1e3:>7.1f}ms"
            f"{rss / 2**20:>6.0f}MiB{cpu:>8.0%}{busy:>6.0%}"
            f"{max(loop_busy) * 1e3:>13.0f}ms{pct(loop_busy, 99) * 1e3:>5.1f}ms{idle:>14.2%}"
            + "".join(f"{pct(times.get(k, []), 99) * 1e3:>10.1f} ms" for k in kinds)
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        span = last[0] - first[0]

        def p99_all(row) -> float:
            return pct([t for v in row[1].values() for t in v], 99)

        print(
            f"per live cluster from {first[0]} to {last[0]}: RSS "
            f"{(last[3] - first[3]) / span / 2**20:.2f} MiB, gateway CPU "
            f"{(last[5] - first[5]) / span * 100:+.3f} % of a core, loop busy p99 "
            f"{(pct(last[7], 99) - pct(first[7], 99)) / span * 1e3:+.3f} ms, API p99 "
            f"{(p99_all(last) - p99_all(first)) / span * 1e3:+.3f} ms, loop lag p99 "
            f"{(pct(last[2], 99) - pct(first[2], 99)) / span * 1e3:+.3f} ms"
        )


def compare(runs: dict[float, list[tuple]]) -> None:
    """Ratios of each run to the first, level by level (same workload, one run after the other)."""
    (base_tick, base), *others = runs.items()
    for tick, rows in others:
        print(f"\nticks every {tick_label(tick)} / every {tick_label(base_tick)}:")
        print(
            f"{'live':>5}{'idle CPU/cluster':>18}{'API p99':>9}{'lag p99':>9}"
            f"{'machine busy':>14}{'req/s':>7}"
        )
        for old, new in zip(base, rows, strict=True):
            old_all = [t for v in old[1].values() for t in v]
            new_all = [t for v in new[1].values() for t in v]
            print(
                f"{new[0]:>5}{new[8] / old[8]:>18.2f}{pct(new_all, 99) / pct(old_all, 99):>9.2f}"
                f"{pct(new[2], 99) / pct(old[2], 99):>9.2f}{new[6] / old[6]:>14.2f}"
                f"{len(new_all) / len(old_all):>7.2f}"
            )


if __name__ == "__main__":
    sys.exit(main())
