"""Chaos: random faults while users work; after each, nothing lost, orphaned or over quota.

Three users keep starting, scaling, adapting and stopping clusters (local schedulers;
workers as local processes and as HTCondor jobs on the schedd stand-in, in one VO capped
at 12 cores and two pools with caps) and computing small graphs with known results. At a
random moment of each round one fault from the list below hits; then the benchmark heals
it, waits until the invariants hold (the recovery time) and records any that do not:

  gateway-kill     SIGKILL of the gateway and its proxy, restart on the same state dir
  gateway-pause    SIGSTOP of the gateway for 2-6 s (a stalled process), then SIGCONT
  schedd-pause     SIGSTOP of the schedd stand-in for 2-8 s, then SIGCONT
  network-stall    every packet to the gateway's port (its proxy: the API, and the
                   scheduler connections routed through it) dropped for 2-8 s, loopback only
  schedd-kill      SIGKILL of the schedd stand-in, down for 0-5 s, restart on the same
                   spool: it replays its job queue log and reconnects its running jobs
  disk-full        the state directory's file system (a 64 MB tmpfs) filled to the last
                   byte while a request writes; the gateway must stop, naming the file
  db-corrupt       gateway killed, its database emptied or damaged: the next start must
                   refuse, naming the file, and leave the clusters running; then restored
  db-locked        gateway killed, another process holds the database's write lock at
                   the next start (released within the wait, or the start refused)

Opt-in worlds (``--with kubernetes,slurm``) add a worker pool each, in the same VO, and
their fault kinds (both start their own daemons; the control plane takes a minute or two):

  kubernetes       workers and, as the Kubernetes launcher needs, every scheduler as pods
                   (pool "pods", at most 3) on a local control plane (tests/k8s) with the
                   process kubelet (tests/fakes/kubernetes) running them as processes:
    apiserver-kill   SIGKILL of kube-apiserver, restarted on the same port after 0-5 s
    kubelet-kill     SIGKILL of the process kubelet, restarted on the same Node after 0-5 s.
                     Its containers die with it (unlike a real kubelet's, which outlive it
                     and are re-adopted): this is a node crash; the restarted kubelet
                     reports each pod whose containers had started Failed
                     (ContainerStatusUnknown)
  slurm            workers as Slurm jobs (pool "slurm", at most 3) on real slurmctld/slurmd
                   (tests/slurm):
    slurmctld-kill   SIGKILL of slurmctld, restarted on the same StateSaveLocation after
                     0-5 s (it recovers its jobs there; running jobs stay with slurmd)

    python benchmarks/chaos.py [--faults 100] [--seed S] [--max-minutes 90] [--json out.json]
                               [--kinds gateway-kill,disk-full,...] [--keep]
                               [--with kubernetes,slurm]

Needs root (the tmpfs, iptables); loopback only. Prints its seed: rerun with --seed to replay the
same faults and workload choices (timings of course vary); --kinds draws from some kinds
only, --keep keeps the run's directory with the gateway's and the stand-in's logs. Exits 1
when any invariant was broken. Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import chaos_kube, chaos_slurm
from benchmarks import chaos_world as world
from benchmarks.chaos_load import POOL_CHOICES, Workload
from gateway_backend.embedded import GatewayProcess
from tests.fakes.schedd import start_standin

KINDS = (
    "gateway-kill",
    "gateway-pause",
    "schedd-pause",
    "network-stall",
    "schedd-kill",
    "disk-full",
    "db-corrupt",
    "db-locked",
)
SETTLE_TIMEOUT = 120.0  # a fault not recovered from by then is a violation
REFUSAL_BOUND = 30.0  # a refused start must say why within this
WORLDS = {"kubernetes": chaos_kube, "slurm": chaos_slurm}  # --with: module, its KINDS, World


class Chaos:
    def __init__(
        self,
        root: Path,
        rng: random.Random,
        standin,
        socket_path: Path,
        worlds: tuple[world.WorkerWorld, ...] = (),
    ) -> None:
        self.rng = rng
        self.worlds = worlds
        self.state_dir = root / "state"
        self.db = self.state_dir / "gateway.sqlite"
        self.standin = standin
        _factory, self.control = standin
        config = root / "config.py"
        config.write_text(world.gateway_config(str(socket_path), root / "staging", worlds))
        self.gateway = GatewayProcess(
            self.state_dir, config_file=config, log_path=root / "gateway.log"
        )
        self.socket_path = socket_path
        self.api = world.Api(self.gateway)
        pools = POOL_CHOICES + tuple(c for w in worlds for c in (w.pool, f"{w.pool},condor"))
        self.load = Workload(self.api, self.gateway, rng, pools)
        self.results: list[dict] = []
        self.violations: list[str] = []
        self.overshoot_samples = 0

    # --- looking -------------------------------------------------------------------------
    def live(self) -> world.Live:
        return world.live_objects(self.state_dir / "clusters", self.control, self.worlds)

    def look(self, with_usage: bool = True) -> world.Check:
        records = world.read_records(self.db)
        try:
            live = self.live()
        except Exception as exc:  # a --with world's API or daemon not answering (yet)
            return world.Check([], [], [f"could not look: {exc!r}"[:200]], [])
        usage = self.api.usage() if with_usage and world.healthy(self.gateway) else None
        if with_usage and usage is None:
            return world.Check([], [], ["quota API did not answer"], [])
        return world.check_invariants(records, live, usage)

    def sample_overshoot(self) -> list[str]:
        """Limits are never exceeded, whatever state the gateway is in."""
        self.overshoot_samples += 1
        records = world.read_records(self.db)
        return world.overshoot_of(self.live(), records)

    def settle(self) -> tuple[float, world.Check, str]:
        """Seconds until the invariants hold twice in a row, the last check, what was awaited."""
        t0 = time.monotonic()
        held = 0
        check = world.Check([], [], ["not checked"], [])
        awaited = ""
        while time.monotonic() - t0 < SETTLE_TIMEOUT:
            check = self.look()
            held = held + 1 if check.holds else 0
            if held == 2:
                return world.elapsed_since(t0), check, awaited
            if not check.holds:
                awaited = "; ".join(check.orphans + check.ghosts + check.quota_mismatch)[:200]
            time.sleep(0.5)
        return world.elapsed_since(t0), check, awaited

    # --- faults --------------------------------------------------------------------------
    def inject(self, kind: str) -> dict:
        """Inject one fault and heal it; what happened, for the table."""
        note: dict = {"kind": kind}
        if kind == "gateway-kill":
            self.gateway.kill()
            self.gateway.start(timeout=90)
        elif kind == "gateway-pause":
            pid = self.gateway.proc.pid
            world.pause(pid)
            try:
                self.load.during_fault(kind, timeout=3)
                note["overshoot"] = self.sample_overshoot()
                time.sleep(self.rng.uniform(2, 6))
            finally:
                world.resume(pid)
        elif kind == "schedd-pause":
            daemon = world.standin_daemon(self.socket_path)
            world.pause(daemon.pid)
            try:
                self.load.during_fault(kind, timeout=20)
                time.sleep(self.rng.uniform(2, 8))
            finally:
                world.resume(daemon.pid)
        elif kind == "network-stall":
            with world.stalled_port(self.gateway.port):
                self.load.during_fault(kind, timeout=3)
                time.sleep(self.rng.uniform(2, 8))
        elif kind == "schedd-kill":
            self.standin.kill_daemon()
            try:
                self.load.during_fault(kind, timeout=20)
                time.sleep(self.rng.uniform(0, 5))
            finally:
                self.standin.restart()
        elif kind == "disk-full":
            note.update(self.disk_full())
        elif kind == "db-corrupt":
            note.update(self.db_corrupt())
        elif kind == "db-locked":
            note.update(self.db_locked())
        else:
            owner = next(w for w in self.worlds if kind in w.kinds)
            note.update(owner.inject(kind, lambda: self.load.during_fault(kind, timeout=20)))
            if lost := note.pop("lost", []):  # failed with the fault (the invariants check)
                self.load.forget(lost)
                note["clusters lost"] = len(lost)
        return note

    def disk_full(self) -> dict:
        before = world.read_records(self.db)
        filler = world.fill(self.state_dir)
        try:
            self.load.during_fault("disk-full", timeout=10, writes=True)
            deadline = time.monotonic() + 15
            while world.gateway_alive(self.gateway) and time.monotonic() < deadline:
                time.sleep(0.2)
            stopped = not world.gateway_alive(self.gateway)
        finally:
            filler.unlink()
        note = {"gateway stopped": stopped}
        if stopped:
            log = self.gateway.log_tail(30)
            if f"the state database {self.db} failed" not in log:
                self.violations.append(f"disk-full: no message naming {self.db}:\n{log}")
            self.gateway.start(timeout=90)
        lost = set(before.clusters) - set(world.read_records(self.db).clusters)
        lost -= self.load.stopped_by_users
        if lost:
            self.violations.append(f"disk-full: records of running clusters lost: {lost}")
        return note

    def db_corrupt(self) -> dict:
        how = self.rng.choice(["empty", "schema page", "not a database"])
        self.gateway.kill()
        world.checkpoint(self.db)  # else the log may hold a good copy of the damaged page
        records = world.read_records(self.db)
        groups_before = self.live()
        backup = self.state_dir.parent / "db-backup"
        backup.mkdir(exist_ok=True)
        for f in world.db_files(self.db):
            shutil.copy2(f, backup / f.name)
        world.corrupt(self.db, how)
        t0 = time.monotonic()
        code, log = world.start_refused(self.gateway, timeout=REFUSAL_BOUND)
        note = {"damage": how, "refused in s": world.elapsed_since(t0)}
        running = bool(groups_before.schedulers)
        if code is None:
            if running or how != "empty":
                self.violations.append(f"db-corrupt ({how}): the gateway started anyway")
            self.gateway.kill()
        elif str(self.db) not in log:
            self.violations.append(f"db-corrupt ({how}): refusal does not name {self.db}:\n{log}")
        after = self.live()
        # Only clusters the database meant to keep running: a pod of a cluster being stopped
        # (its deletion's grace period) or of one a node crash ended may go meanwhile.
        meant = {n for n, r in records.clusters.items() if r["target"] == world.RUNNING}
        meant -= set(self.load.forgotten)
        gone = (groups_before.schedulers - after.schedulers) & meant
        if gone:
            self.violations.append(
                f"db-corrupt ({how}): clusters were stopped by the refusal: {sorted(gone)}"
            )
        for f in world.db_files(self.db):  # the recovery: put the copy back
            f.unlink()
        for f in backup.iterdir():
            shutil.move(str(f), self.state_dir / f.name)
        self.gateway.start(timeout=90)
        return note

    def db_locked(self) -> dict:
        import sqlite3

        self.gateway.kill()
        hold = self.rng.choice([1.5, 3.0, 3.0, 25.0])  # 25 s: past the start-up and 10 s wait
        holder = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(hold, holder.rollback)
        release.start()
        try:
            code, log = world.start_refused(self.gateway, timeout=REFUSAL_BOUND)
        finally:
            release.join()
            holder.close()
        note = {"held s": hold, "refused": code is not None}
        if hold > 10 and code is None:
            self.violations.append("db-locked: started although the lock outlived the wait")
        if code is not None:
            if hold < 10:
                self.violations.append(f"db-locked: refused although released in {hold}s:\n{log}")
            elif "stayed locked" not in log or str(self.db) not in log:
                self.violations.append(f"db-locked: refusal does not say why:\n{log}")
            self.gateway.start(timeout=90)
        return note

    # --- the run -------------------------------------------------------------------------
    def run(self, faults: int, deadline: float, only: tuple[str, ...] = KINDS) -> None:
        kinds = [only[i % len(only)] for i in range(faults)]
        self.rng.shuffle(kinds)
        self.gateway.start(timeout=90)
        self.load.warm_up()
        for i, kind in enumerate(kinds, 1):
            if time.monotonic() > deadline:
                print(f"time is up: {i - 1} of {faults} faults injected", flush=True)
                break
            self.load.step()
            overshoot = self.sample_overshoot()
            time.sleep(self.rng.uniform(0, 1.5))  # mid-start, mid-scale, mid-stop
            t_fault = time.monotonic()
            note = self.inject(kind)
            heal = world.elapsed_since(t_fault)  # the fault's length and the restart, if any
            overshoot += note.pop("overshoot", [])
            recovery, check, awaited = self.settle()
            wrong = self.load.compute_check()
            row = {
                **note,
                "heal_s": heal,
                "recovery_s": recovery,
                "orphans": check.orphans,
                "ghosts": check.ghosts,
                "quota_mismatch": check.quota_mismatch,
                "overshoot": overshoot,
                "wrong_results": wrong,
                "awaited": awaited,
            }
            self.results.append(row)
            bad = {k: v for k, v in row.items() if isinstance(v, list) and v}
            said = {k: v for k, v in note.items() if k != "kind"}
            print(
                f"[{i}/{len(kinds)}] {kind} {said}: healed in {heal}s, invariants held "
                f"{recovery}s later: {bad or 'ok'}",
                flush=True,
            )
            if awaited:
                print(f"    until then: {awaited}", flush=True)
        self.finish()

    def finish(self) -> None:
        """Every cluster stopped through the API, the gateway stopped; nothing may be left."""
        if not world.healthy(self.gateway):
            self.gateway.start(timeout=90)
        self.load.stop_all()
        t0 = time.monotonic()
        left = None
        while time.monotonic() - t0 < 60:
            try:
                live = self.live()
            except Exception as exc:
                left = [f"could not look: {exc!r}"]
                time.sleep(0.5)
                continue
            left = sorted(live.schedulers) + sorted(map("/".join, live.workers()))
            left += live.stray_job_processes
            if not left:
                break
            time.sleep(0.5)
        if left:
            self.violations.append(f"after stopping every cluster still running: {left}")
        self.gateway.stop()


def table(results: list[dict], load: Workload, violations: list[str], samples: int) -> str:
    lines = [
        "| fault | injected | fault+heal median / max s | settle median / max s | orphans "
        "| ghosts | quota mismatch | overshoot | wrong results |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    others = sorted({r["kind"] for r in results} - set(KINDS))  # the --with worlds' kinds
    for kind in (*KINDS, *others, "all"):
        rows = [r for r in results if kind in ("all", r["kind"])]
        if not rows:
            continue
        rec = [r["recovery_s"] for r in rows]
        heal = [r["heal_s"] for r in rows]
        counts = [
            sum(len(r[k]) for r in rows)
            for k in ("orphans", "ghosts", "quota_mismatch", "overshoot", "wrong_results")
        ]
        lines.append(
            f"| {kind} | {len(rows)} | {statistics.median(heal):.1f} / {max(heal):.1f} "
            f"| {statistics.median(rec):.1f} / {max(rec):.1f} | "
            + " | ".join(map(str, counts))
            + " |"
        )
    r = load.requests
    lines += [
        "",
        f"requests: {r['ok']} succeeded, {r['refused']} refused with a message, "
        f"{r['unavailable']} unanswered during a fault (bounded), "
        f"{len(load.unexplained)} unexplained; computations: {load.computed} correct, "
        f"{len(load.wrong)} wrong; overshoot samples: {samples}; other violations: "
        f"{len(violations)}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=90)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--kinds", help="fault kinds to draw from (default: every kind of the worlds chosen)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs)")
    parser.add_argument(
        "--with", dest="worlds", default="", help="also kubernetes and/or slurm (comma list)"
    )
    args = parser.parse_args()
    names = [n for n in args.worlds.split(",") if n]
    if set(names) - set(WORLDS):
        parser.error(
            f"--with: unknown {sorted(set(names) - set(WORLDS))}; choose from {','.join(WORLDS)}"
        )
    known = KINDS + tuple(k for n in names for k in WORLDS[n].KINDS)
    args.kinds = args.kinds or ",".join(known)
    unknown = set(args.kinds.split(",")) - set(known)
    if unknown:
        parser.error(
            f"--kinds: unknown {sorted(unknown)}; with --with {args.worlds or '(none)'} "
            f"choose from {','.join(known)}"
        )
    if os.geteuid() != 0:
        print("chaos.py needs root (a small tmpfs for the disk-full fault)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"chaos: seed {seed}, {args.faults} faults, at most {args.max_minutes} min", flush=True)
    rng = random.Random(seed)
    deadline = time.monotonic() + args.max_minutes * 60
    root = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    t0 = time.monotonic()
    try:
        with (
            world.small_tmpfs(root / "state", 64),
            start_standin(root, slots=world.POOL_CAPS["condor"], tick=0.5) as standin,
            contextlib.ExitStack() as worlds,
        ):
            started = tuple(worlds.enter_context(WORLDS[n].World(root, rng)) for n in names)
            socket_path = root / "standin" / "schedd.sock"
            chaos = Chaos(root, rng, standin, socket_path, started)
            try:
                chaos.run(args.faults, deadline, tuple(args.kinds.split(",")))
            except Exception as exc:  # reported with the table, as a violation
                chaos.violations.append(f"the run stopped early: {exc!r}")
            finally:
                chaos.gateway.stop()
                chaos.gateway.kill()
                chaos.gateway.kill_leftovers()
    finally:
        if args.keep:
            print(f"kept {root} (gateway.log, standin/standin.log)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    violations = chaos.violations + chaos.load.unexplained + chaos.load.wrong
    print(f"\nseed {seed}; {len(chaos.results)} faults in {time.monotonic() - t0:.0f}s")
    print(table(chaos.results, chaos.load, chaos.violations, chaos.overshoot_samples))
    for message, times in chaos.load.refusals.most_common():
        print(f"refused {times}x: {message}")
    for v in violations:
        print("VIOLATION:", v)
    if args.json:
        summary = {
            "seed": seed,
            "results": chaos.results,
            "violations": violations,
            "requests": chaos.load.requests,
            "computed": chaos.load.computed,
        }
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    failed = violations or any(
        r[k] for r in chaos.results for k in ("orphans", "ghosts", "quota_mismatch", "overshoot")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
