"""What benchmarks/chaos.py runs and looks at: a gateway, a schedd stand-in, and the truth.

The truth is read from outside the gateway: its SQLite file (read-only), the processes in
its cluster directories, the stand-in's job queue, and its quota API. The invariants
compare them: no orphan (a process or job without an active record), no ghost (a running
record without its process or job), quota usage equal to what really runs, never more
running than a limit allows.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway_backend.embedded import GatewayProcess  # noqa: E402
from gateway_backend.launchers.local_isolation import find_processes  # noqa: E402
from tests.conftest import http  # noqa: E402
from tests.fakes.schedd import leftover_job_pids  # noqa: E402

STOPPED = 5  # dask-gateway's JobStatus: CREATED 1, SUBMITTED 2, RUNNING 3, CLOSING 4, ...
RUNNING = 3
IDLE_JOB, RUNNING_JOB = 1, 2  # HTCondor JobStatus
VO = "guests"
MAX_CORES = 12  # the VO's cap: schedulers (1 core each) and workers (1 core each)
POOL_CAPS = {"local": 3, "condor": 5}


@dataclass
class Seen:
    """What one optional world (``--with``) runs now: schedulers, workers, leftovers."""

    schedulers: set[str] = field(default_factory=set)
    workers: set[tuple[str, str]] = field(default_factory=set)
    strays: list[str] = field(default_factory=list)  # processes of no live pod/job


class WorkerWorld(Protocol):
    """A batch system or cluster besides the stand-in (benchmarks/chaos_kube.py, chaos_slurm.py).

    A context manager that starts and stops it; ``config()`` adds its worker pool ``pool``
    (capped at ``cap``, in the one VO) to the gateway's config; ``inject(kind, during)``
    injects one of its ``kinds``, calls ``during()`` (a request) while it lasts, and heals
    it (its note's ``lost``: clusters the fault ends, as a node crash does, which the users
    then know are gone); ``live()`` reads what runs there, for the invariants.
    """

    pool: str
    cap: int
    kinds: tuple[str, ...]

    def __enter__(self) -> WorkerWorld: ...
    def __exit__(self, *exc: object) -> None: ...
    def config(self) -> str: ...
    def inject(self, kind: str, during: Callable[[], None]) -> dict[str, Any]: ...
    def live(self) -> Seen: ...


def gateway_config(socket_path: str, staging: Path, worlds: Sequence[WorkerWorld] = ()) -> str:
    """The gateway under test: local schedulers, local and HTCondor workers, one capped VO
    (plus each ``--with`` world's pool, and its scheduler settings)."""
    bindir = os.path.dirname(sys.executable)
    extra = "".join(w.config() for w in worlds)
    return f"""
import sys; sys.path.insert(0, {str(REPO)!r})
from tests.fakes.schedd.client import StandinSchedd
c.ElasticBackend.cluster_heartbeat_period = 1
c.ElasticBackend.cluster_heartbeat_timeout = 30
c.ElasticBackend.cluster_status_period = 1
c.ElasticBackend.worker_status_period = 1
c.ElasticBackend.check_timeouts_period = 1
c.ElasticBackend.worker_start_timeout = 90
c.ElasticBackend.launcher_retry_delay = 1
c.LocalLauncher.stop_grace_period = 3
# Three test users' clusters under this one OS account: acceptable on a benchmark machine
# only (docs/security.md); a facility sets LocalLauncher.run_as = "user".
c.LocalLauncher.single_user = ""
c.LocalLauncher.allow_shared_local_user = True
c.ElasticBackend.worker_pools = {{
    "local": {{"launcher": "local", "max_workers": {POOL_CAPS["local"]}}},
    "condor": {{"launcher": "htcondor", "max_workers": {POOL_CAPS["condor"]}}},
}}
c.ElasticBackend.vos = {{{VO!r}: {{"max_cores": {MAX_CORES}, "max_clusters_per_user": 2}}}}
c.ElasticBackend.users_without_vo = {VO!r}
c.HTCondorLauncher.status_period = 1
c.HTCondorLauncher.gateway_id = "chaos"
c.HTCondorLauncher.staging_directory = {str(staging)!r}
c.HTCondorLauncher.environment = {{"PATH": {bindir + ":/usr/bin:/bin"!r}}}
c.HTCondorLauncher.schedd_timeout = 5
c.HTCondorLauncher.schedd_factory = lambda: StandinSchedd({socket_path!r})
c.HTCondorLauncher.worker_host = "127.0.0.1"
{extra}"""


@dataclass
class Records:
    """Active clusters and workers as the gateway's database has them."""

    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> row
    workers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    stopped: dict[str, int] = field(default_factory=dict)  # name -> final status


def read_records(db: Path) -> Records:
    """The records, read-only (the gateway may be running, dead, or refusing to start)."""
    out = Records()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        for name, user, status, target, count, options in conn.execute(
            "SELECT name, username, status, target, count, options FROM clusters"
        ):
            row = {"user": user, "status": status, "target": target, "count": count}
            row["options"] = json.loads(options)
            if status < STOPPED:
                out.clusters[name] = row
            else:
                out.stopped[name] = status
        for worker, cluster, status, target, state in conn.execute(
            "SELECT w.name, c.name, w.status, w.target, w.state FROM workers w "
            "JOIN clusters c ON w.cluster_id = c.id WHERE w.status < ? AND c.status < ?",
            (STOPPED, STOPPED),
        ):
            out.workers[(cluster, worker)] = {
                "status": status,
                "target": target,
                "pool": json.loads(state).get("pool", "local"),
            }
    finally:
        conn.close()
    return out


@dataclass
class Live:
    """What really runs: local process groups and the stand-in's queued or running jobs."""

    schedulers: set[str]
    local_workers: set[tuple[str, str]]
    jobs: dict[tuple[str, str], int]  # (cluster, worker) -> JobStatus (idle or running)
    stray_job_processes: list[str] = field(default_factory=list)  # of jobs not in the queue
    pools: dict[str, tuple[int, set[tuple[str, str]]]] = field(default_factory=dict)  # --with

    def workers(self) -> set[tuple[str, str]]:
        out = self.local_workers | set(self.jobs)
        for _cap, workers in self.pools.values():
            out |= workers
        return out


def job_processes(standin_dir: Path) -> dict[int, str]:
    """pid -> job id ("cluster.proc") of every live process the stand-in started."""
    out = {}
    for pid in leftover_job_pids(standin_dir):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for var in environ:
                if var.startswith(b"_CONDOR_SCRATCH_DIR="):
                    scratch = var.split(b"=", 1)[1].decode().rstrip("/").rsplit("/", 1)[-1]
                    out[pid] = scratch.removeprefix("dir_").rsplit("_", 1)[0]
    return out


def live_objects(clusters_dir: Path, control, worlds: Sequence[WorkerWorld] = ()) -> Live:
    """What runs, read from outside; a world that cannot be read (its API down) raises."""
    found = find_processes(str(clusters_dir)) if clusters_dir.is_dir() else []
    leaders = [(c, w) for c, w, leader, _ in found if leader]
    jobs, job_ids = {}, set()
    for ad in control.jobs(include_history=False):
        status = int(ad.get("JobStatus", 0))
        job_ids.add(f"{ad['ClusterId']}.{ad['ProcId']}")
        if status in (IDLE_JOB, RUNNING_JOB) and "DaskGatewayCluster" in ad:
            jobs[(str(ad["DaskGatewayCluster"]), str(ad["DaskGatewayWorker"]))] = status
    processes = job_processes(Path(control.workdir))
    live = Live(
        schedulers={c for c, w in leaders if w is None},
        local_workers={(c, w) for c, w in leaders if w is not None},
        jobs=jobs,
        stray_job_processes=[
            f"pid {pid} of job {job}" for pid, job in processes.items() if job not in job_ids
        ],
    )
    for world in worlds:
        seen = world.live()
        live.schedulers |= seen.schedulers
        live.pools[world.pool] = (world.cap, seen.workers)
        live.stray_job_processes += seen.strays
    return live


@dataclass
class Check:
    """One look at the invariants; empty lists mean they hold."""

    orphans: list[str]
    ghosts: list[str]
    quota_mismatch: list[str]
    overshoot: list[str]

    @property
    def holds(self) -> bool:
        return not (self.orphans or self.ghosts or self.quota_mismatch or self.overshoot)


def overshoot_of(live: Live, records: Records) -> list[str]:
    """Limits exceeded by what runs now (sampled instants, the gateway alive or not)."""
    out = []
    ours = [w for w in live.workers() if w[0] in records.clusters or w[0] in live.schedulers]
    cores = len(live.schedulers) + len(ours)
    if cores > MAX_CORES:
        out.append(f"VO {VO}: {cores} cores run, max_cores={MAX_CORES}")
    by_pool = {"local": (POOL_CAPS["local"], len(live.local_workers))}
    by_pool["condor"] = (POOL_CAPS["condor"], len(live.jobs))
    by_pool.update({pool: (cap, len(w)) for pool, (cap, w) in live.pools.items()})
    for pool, (cap, n) in by_pool.items():
        if n > cap:
            out.append(f"pool {pool}: {n} workers run, max_workers={cap}")
    return out


def check_invariants(records: Records, live: Live, usage: dict[str, Any] | None) -> Check:
    orphans = [f"scheduler of {c}" for c in sorted(live.schedulers - set(records.clusters))]
    orphans += [f"worker {c}/{w}" for c, w in sorted(live.workers() - set(records.workers))]
    orphans += [f"stand-in {p} (no longer in its queue)" for p in live.stray_job_processes]
    ghosts = [
        f"cluster {c} is RUNNING without a scheduler"
        for c, row in records.clusters.items()
        if row["status"] == RUNNING and c not in live.schedulers
    ]
    ghosts += [
        f"worker {c}/{w} is RUNNING without its {row['pool']} process/job"
        for (c, w), row in records.workers.items()
        if row["status"] == RUNNING and (c, w) not in live.workers()
    ]
    mismatch = []
    if usage is not None:
        held = [w for w in live.workers() if w in records.workers]
        want = {"clusters": len(records.clusters), "workers": len(held)}
        want["cores"] = want["clusters"] + want["workers"]
        for key, value in want.items():
            if usage.get(key) != value:
                mismatch.append(f"VO usage {key}={usage.get(key)}, live sum {value}")
    return Check(orphans, ghosts, mismatch, overshoot_of(live, records))


class Api:
    """Raw HTTP calls to the gateway as any user, with a bound on every call."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway

    def call(
        self, method: str, path: str, user: str, body: dict | None = None, timeout: float = 20
    ) -> tuple[int, dict]:
        """(status, JSON body); raises OSError/TimeoutError when no answer came."""
        return http(self.gateway, method, path, body, username=user, timeout=timeout)

    def usage(self) -> dict[str, Any] | None:
        try:
            status, body = self.call("GET", "/api/elastic/v1/quota", "chaos-observer", timeout=5)
        except OSError:
            return None
        return body["vos"][VO]["usage"] if status == 200 else None


def gateway_alive(gateway: GatewayProcess) -> bool:
    return gateway.proc is not None and gateway.proc.poll() is None


def healthy(gateway: GatewayProcess) -> bool:
    if not gateway_alive(gateway):
        return False
    try:
        with urllib.request.urlopen(gateway.address + "/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def standin_daemon(socket_path: Path) -> psutil.Process:
    """The stand-in's daemon process (a child of this one)."""
    for proc in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if str(socket_path) in " ".join(proc.cmdline()):
                return proc
    raise RuntimeError(f"no stand-in daemon serving {socket_path}")


def start_refused(gateway: GatewayProcess, timeout: float = 60) -> tuple[int | None, str]:
    """Start the gateway expecting a refusal: (exit code or None if it served, its output)."""
    try:
        gateway.start(timeout=timeout)
    except RuntimeError:
        return gateway.proc.returncode, gateway.log_tail(20)
    return None, ""


@contextlib.contextmanager
def small_tmpfs(path: Path, size_mb: int):
    """A tmpfs of ``size_mb`` at ``path`` (root only), unmounted on exit whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; the filler file to delete."""
    filler = directory / "chaos-filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    return filler


@contextlib.contextmanager
def stalled_port(port: int) -> Iterator[None]:
    """Every TCP packet to ``127.0.0.1:port`` dropped (loopback only) while inside: connections
    through it stall, none is refused or reset. Needs root (iptables)."""
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port)]
    rule += ["-m", "comment", "--comment", f"elastic-gateway-chaos-{os.getpid()}", "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=False, capture_output=True)


def fault_window(
    seconds: float, fault: Callable[[], None], heal: Callable[[], None], during: Callable[[], None]
) -> None:
    """``fault()``, ``during()`` while it lasts, until ``seconds`` after the fault, ``heal()``
    (healed even when ``during`` fails)."""
    t0 = time.monotonic()
    fault()
    try:
        during()
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    finally:
        heal()


def pause(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def corrupt(db: Path, how: str) -> None:
    """Damage the database file as a failing disk or a stray command would."""
    if how == "empty":
        db.write_bytes(b"")
    elif how == "schema page":
        with open(db, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 3996)
    else:  # "not a database"
        with open(db, "r+b") as f:
            f.write(b"garbage!" * 8)


def checkpoint(db: Path) -> None:
    """Move the write-ahead log into the database file (the gateway is not running)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def db_files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def elapsed_since(t0: float) -> float:
    return round(time.monotonic() - t0, 2)
