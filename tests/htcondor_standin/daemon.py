"""The stand-in schedd: a daemon process that queues jobs and runs them as local processes.

It is a separate process so that it outlives whatever submitted to it, exactly like a real
``condor_schedd`` outlives the gateway (a killed gateway's jobs must still be cleaned up by
their lease).  Clients talk to it over a Unix socket, one JSON line per request and one per
answer (see ``client.py``).  Job ads are real ``classad2.ClassAd`` objects and every
constraint and policy expression is evaluated by the real ``classad2``.

Run: ``python -m tests.htcondor_standin.daemon --socket PATH --workdir DIR --slots N``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import getpass
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import classad2
import htcondor2

from .jobads import (
    SubmitContext,
    SubmitError,
    ad_texts,
    expand_submit,
    job_argv_tail,
    job_environment,
)

log = logging.getLogger("htcondor_standin")

IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)

#: Attributes the real schedd refuses to let ``edit`` change.
PROTECTED_ATTRS = frozenset(
    a.lower()
    for a in ("ClusterId", "ProcId", "Owner", "User", "JobStatus", "MyType", "GlobalJobId")
)

#: Requests bigger than this are refused (a whole submit is one line).
MAX_REQUEST_BYTES = 64 * 1024 * 1024


class RequestError(Exception):
    """An error to send back to the client as an exception of type ``kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _StartFailure(Exception):
    """Starting a job failed the way a starter/shadow failure puts a job on hold."""

    def __init__(self, code: int, subcode: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.subcode, self.reason = code, subcode, reason


@dataclass
class Config:
    """Daemon settings (command-line options)."""

    socket: Path
    workdir: Path
    slots: int = 4
    start_latency: float = 0.0
    tick: float = 1.0
    poll: float = 0.05
    kill_grace: float = 3.0
    completed_linger: float = 0.0
    history_size: int = 1000
    keep_scratch: bool = False
    name: str = "standin"
    exit_with_pid: int | None = None


@dataclass
class Job:
    """One proc: its ad plus what the daemon needs to run it."""

    ad: classad2.ClassAd
    idle_since: float
    process: subprocess.Popen[bytes] | None = None
    scratch: Path | None = None
    slot: int | None = None
    #: What the end of the running process means: complete, leave (removed), stay (held),
    #: idle (vacated).
    after_exit: str = "complete"
    kill_at: float | None = None
    completed_at: float | None = None
    files: list[IO[bytes]] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return int(self.ad["ClusterId"]), int(self.ad["ProcId"])

    @property
    def status(self) -> int:
        return int(self.ad["JobStatus"])


def _truthy(value: Any) -> bool:
    """ClassAd EvalBool semantics: booleans, non-zero numbers; UNDEFINED/ERROR are false."""
    if isinstance(value, classad2.Value):  # an IntEnum: must be tested before int
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return False


def _policy(ad: classad2.ClassAd, attr: str) -> bool | None:
    """Evaluate a job policy expression: True/False, or None for UNDEFINED/ERROR/non-bool."""
    if attr not in ad:
        return False
    try:
        value = ad.eval(attr)
    except Exception:
        return None
    if isinstance(value, classad2.Value):  # UNDEFINED / ERROR (an IntEnum, so before int)
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return None


def _int_attr(ad: classad2.ClassAd, attr: str, default: int) -> int:
    try:
        value = ad.eval(attr) if attr in ad else default
    except Exception:
        return default
    if isinstance(value, classad2.Value) or not isinstance(value, (int, float)):
        return default
    return int(value)


def _str_attr(ad: classad2.ClassAd, attr: str, default: str = "") -> str:
    try:
        value = ad.eval(attr) if attr in ad else default
    except Exception:
        return default
    return value if isinstance(value, str) else default


def _compile_constraint(constraint: str) -> classad2.ExprTree:
    text = constraint.strip() or "true"
    try:
        return classad2.ExprTree(text)
    except Exception as exc:
        raise RequestError("HTCondorException", f"Invalid constraint: {constraint!r}") from exc


def _matches(expr: classad2.ExprTree, ad: classad2.ClassAd) -> bool:
    try:
        return _truthy(expr.eval(ad))
    except Exception:
        return False


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ScheddState:
    """The job queue, the slots, fault injection and counters; driven by one event loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.jobs: dict[tuple[int, int], Job] = {}
        self.history: collections.deque[classad2.ClassAd] = collections.deque(
            maxlen=cfg.history_size
        )
        self.next_cluster = 1
        self.owner = getpass.getuser()
        self.stop = asyncio.Event()
        self.unavailable_until = 0.0
        self.hang_until = 0.0
        self.hang_process = False
        self.call_latency = 0.0
        self.last_periodic = 0.0
        self.reset_counters()

    # --- counters ----------------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Zero the per-method call counters."""
        self.counters: dict[str, Any] = {
            "submit": 0,
            "query": 0,
            "act": 0,
            "edit": 0,
            "submit_procs": [],
            "refused": {"submit": 0, "query": 0, "act": 0, "edit": 0},
            "hung": {"submit": 0, "query": 0, "act": 0, "edit": 0},
        }

    # --- the socket protocol -----------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one request: one JSON line in, one JSON line out, then close."""
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=60)
            if not line:
                return
            request = json.loads(line)
            op, args = request["op"], request.get("args", {})
            if not op.startswith("ctl."):
                now = time.time()
                if now < self.unavailable_until:
                    self.counters["refused"][op] = self.counters["refused"].get(op, 0) + 1
                    return  # close without answering: the client sees "cannot connect"
                if now < self.hang_until:
                    self.counters["hung"][op] = self.counters["hung"].get(op, 0) + 1
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(reader.read(1), timeout=self.hang_until - now)
                    if not self.hang_process:
                        return
                if self.call_latency > 0:
                    await asyncio.sleep(self.call_latency)
            try:
                answer: dict[str, Any] = {"ok": True, "result": self.dispatch(op, args)}
            except RequestError as exc:
                answer = {"ok": False, "kind": exc.kind, "message": str(exc)}
            except Exception as exc:  # a stand-in bug must not look like a hang
                log.exception("request %s failed", op)
                answer = {"ok": False, "kind": "HTCondorException", "message": f"standin: {exc!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, json.JSONDecodeError, KeyError) as exc:
            log.warning("dropped a request: %r", exc)
        finally:
            writer.close()

    def dispatch(self, op: str, args: dict[str, Any]) -> Any:
        """Route one request to its handler."""
        handlers = {
            "submit": self.op_submit,
            "query": self.op_query,
            "act": self.op_act,
            "edit": self.op_edit,
            "ctl.ping": self.ctl_ping,
            "ctl.fault": self.ctl_fault,
            "ctl.counters": lambda a: self.counters,
            "ctl.reset_counters": lambda a: self.reset_counters(),
            "ctl.jobs": self.ctl_jobs,
            "ctl.set": self.ctl_set,
            "ctl.shutdown": lambda a: self.stop.set(),
        }
        if op not in handlers:
            raise RequestError("HTCondorException", f"unknown request {op!r}")
        if op in ("submit", "query", "act", "edit"):
            self.counters[op] += 1
        return handlers[op](args)

    # --- schedd methods ----------------------------------------------------------------------

    def op_submit(self, args: dict[str, Any]) -> dict[str, Any]:
        """Queue the procs of one submit transaction; all or nothing."""
        cwd = args.get("cwd") or os.getcwd()
        now = int(time.time())
        ctx = SubmitContext(
            cluster_id=self.next_cluster,
            qdate=now,
            owner=self.owner,
            submit_cwd=cwd,
            schedd_name=self.cfg.name,
            submitter_env=args.get("env") or {},
        )
        try:
            # condor_submit resolves "queue ... matching *.dat" in the submitter's cwd.
            with contextlib.chdir(cwd):
                expanded = expand_submit(
                    args["text"],
                    ctx,
                    count=int(args.get("count", 0)),
                    queue=args.get("queue"),
                    spool=bool(args.get("spool", False)),
                )
        except ValueError as exc:
            raise RequestError("ValueError", str(exc)) from exc
        except (SubmitError, OSError) as exc:
            raise RequestError("HTCondorException", f"Failed to submit: {exc}") from exc
        self.next_cluster += 1
        for ad in expanded.ads:
            job = Job(ad=ad, idle_since=time.time())
            self.jobs[job.key] = job
        self.counters["submit_procs"].append(len(expanded.ads))
        log.info("submitted cluster %d with %d procs", ctx.cluster_id, len(expanded.ads))
        return {
            "cluster": ctx.cluster_id,
            "first_proc": 0,
            "num_procs": len(expanded.ads),
            "cluster_ad": str(expanded.cluster_ad),
        }

    def op_query(self, args: dict[str, Any]) -> list[str]:
        """Job ads matching a constraint, projected, in (cluster, proc) order."""
        expr = _compile_constraint(str(args.get("constraint", "true")))
        projection = [str(p) for p in args.get("projection") or []]
        limit = int(args.get("limit", -1))
        out: list[classad2.ClassAd] = []
        for key in sorted(self.jobs):
            ad = self.jobs[key].ad
            if not _matches(expr, ad):
                continue
            out.append(self._project(ad, projection))
            if 0 <= limit <= len(out):
                break
        return ad_texts(out)

    def _project(self, ad: classad2.ClassAd, projection: list[str]) -> classad2.ClassAd:
        result = classad2.ClassAd()
        now = int(time.time())
        if not projection:
            result.update({k: ad.lookup(k) for k in ad.keys()})
            result["ServerTime"] = now
            return result
        for attr in projection:
            if attr in ad:
                result[attr] = ad.lookup(attr)
            elif attr.lower() == "servertime":
                result[attr] = now
        return result

    def _select(self, mode: str, spec: str) -> tuple[list[Job], int]:
        """Jobs named by ids ("1.0, 2.3") or a constraint; also how many ids were not found."""
        if mode == "ids":
            found, missing = [], 0
            for token in spec.replace(",", " ").split():
                cluster, _, proc = token.partition(".")
                try:
                    job = self.jobs.get((int(cluster), int(proc)))
                except ValueError as exc:
                    raise RequestError("ValueError", "Invalid ID") from exc
                if job is None:
                    missing += 1
                else:
                    found.append(job)
            return found, missing
        expr = _compile_constraint(spec)
        return [self.jobs[k] for k in sorted(self.jobs) if _matches(expr, self.jobs[k].ad)], 0

    def op_act(self, args: dict[str, Any]) -> dict[str, int]:
        """Remove/Hold/Release/Vacate/Suspend/Continue jobs; answer with the totals ad."""
        action = htcondor2.JobAction(int(args["action"]))
        jobs, missing = self._select(args["mode"], str(args["spec"]))
        reason = args.get("reason")
        code = args.get("reason_code")
        subcode = int(code) if code not in (None, "None", "") and str(code).isdigit() else 0
        text = f"{reason if reason else 'Python-initiated action'} (by user {self.owner})"
        totals = dict.fromkeys(
            (
                "TotalError",
                "TotalSuccess",
                "TotalNotFound",
                "TotalBadStatus",
                "TotalAlreadyDone",
                "TotalPermissionDenied",
                "TotalJobAds",
                "TotalChangedAds",
            ),
            0,
        )
        totals["TotalNotFound"] = missing
        totals["TotalJobAds"] = len(jobs)
        for job in jobs:
            outcome = self._act_one(job, action, text, subcode)
            totals[outcome] += 1
        totals["TotalChangedAds"] = totals["TotalSuccess"]
        log.info("act %s on %d jobs: %s", action.name, len(jobs), totals)
        return totals

    def _act_one(self, job: Job, action: htcondor2.JobAction, text: str, subcode: int) -> str:
        status = job.status
        being_killed = job.process is not None and job.after_exit != "complete"
        if action in (htcondor2.JobAction.Remove, htcondor2.JobAction.RemoveX):
            if status == REMOVED:
                if action == htcondor2.JobAction.RemoveX and job.process is not None:
                    _killpg(job.process.pid, signal.SIGKILL)
                    return "TotalSuccess"
                return "TotalAlreadyDone"
            self._remove(job, text)
            return "TotalSuccess"
        if action == htcondor2.JobAction.Hold:
            if status == HELD:
                return "TotalAlreadyDone"
            if status not in (IDLE, RUNNING, SUSPENDED) or being_killed:
                return "TotalBadStatus"
            self._hold(job, text, 1, subcode)
            return "TotalSuccess"
        if action == htcondor2.JobAction.Release:
            if status != HELD:
                return "TotalBadStatus"
            self._release(job, text)
            return "TotalSuccess"
        if action in (htcondor2.JobAction.Vacate, htcondor2.JobAction.VacateFast):
            if status not in (RUNNING, SUSPENDED) or being_killed:
                return "TotalBadStatus"
            fast = action == htcondor2.JobAction.VacateFast
            self._kill(job, "idle", signal.SIGKILL if fast else signal.SIGTERM)
            return "TotalSuccess"
        if action == htcondor2.JobAction.Suspend:
            if status == SUSPENDED:
                return "TotalAlreadyDone"
            if status != RUNNING or job.process is None or being_killed:
                return "TotalBadStatus"
            _killpg(job.process.pid, signal.SIGSTOP)
            self._set_status(job, SUSPENDED)
            return "TotalSuccess"
        if action == htcondor2.JobAction.Continue:
            if status != SUSPENDED or job.process is None:
                return "TotalBadStatus"
            _killpg(job.process.pid, signal.SIGCONT)
            self._set_status(job, RUNNING)
            return "TotalSuccess"
        return "TotalError"

    def op_edit(self, args: dict[str, Any]) -> int:
        """Set one attribute (a ClassAd expression) on matching jobs; answer the count."""
        attr, value = str(args["attr"]), str(args["value"])
        ids = args["mode"] == "ids"
        failure = "Unable to edit job" if ids else "Unable to edit jobs matching constraint"
        if attr.lower() in PROTECTED_ATTRS or not attr.replace("_", "").isalnum():
            raise RequestError("HTCondorException", failure)
        try:
            expr = classad2.ExprTree(value)
        except Exception as exc:
            raise RequestError("HTCondorException", failure) from exc
        jobs, missing = self._select(args["mode"], str(args["spec"]))
        if ids and missing:
            raise RequestError("HTCondorException", failure)
        for job in jobs:
            job.ad[attr] = expr
        log.info("edit %s = %s on %d jobs", attr, value, len(jobs))
        return len(jobs)

    # --- control channel ---------------------------------------------------------------------

    def ctl_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        """Liveness and current settings."""
        return {
            "pid": os.getpid(),
            "name": self.cfg.name,
            "slots": self.cfg.slots,
            "start_latency": self.cfg.start_latency,
            "tick": self.cfg.tick,
            "jobs": len(self.jobs),
            "running": sum(1 for j in self.jobs.values() if j.process is not None),
            "workdir": str(self.cfg.workdir),
            "time": time.time(),
        }

    def ctl_fault(self, args: dict[str, Any]) -> None:
        """Make the schedd unreachable, hang, or slow for a while (or clear all faults)."""
        kind = args["kind"]
        now = time.time()
        seconds = float(args.get("seconds", 0.0))
        if kind == "unavailable":
            self.unavailable_until = now + seconds
        elif kind == "hang":
            self.hang_until = now + seconds
            self.hang_process = bool(args.get("process_after", False))
        elif kind == "latency":
            self.call_latency = seconds
        elif kind == "clear":
            self.unavailable_until = self.hang_until = self.call_latency = 0.0
        else:
            raise RequestError("ValueError", f"unknown fault {kind!r}")
        log.info("fault %s %.2fs", kind, seconds)

    def ctl_jobs(self, args: dict[str, Any]) -> list[str]:
        """Queue ads plus (optionally) the history of jobs that left the queue."""
        queue = [self.jobs[k].ad for k in sorted(self.jobs)] if args.get("queue", True) else []
        history = list(self.history) if args.get("history", True) else []
        return ad_texts([*history, *queue])

    def ctl_set(self, args: dict[str, Any]) -> None:
        """Change slots / start latency / tick at runtime."""
        if "slots" in args:
            self.cfg.slots = max(0, int(args["slots"]))
        if "start_latency" in args:
            self.cfg.start_latency = max(0.0, float(args["start_latency"]))
        if "tick" in args:
            self.cfg.tick = max(0.01, float(args["tick"]))

    # --- state transitions -------------------------------------------------------------------

    def _set_status(self, job: Job, status: int) -> None:
        job.ad["LastJobStatus"] = job.status
        job.ad["JobStatus"] = status
        job.ad["EnteredCurrentStatus"] = int(time.time())

    def _kill(self, job: Job, after: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the job's process group; SIGKILL follows after the grace period."""
        assert job.process is not None
        job.after_exit = after
        _killpg(job.process.pid, sig)
        if job.status == SUSPENDED:
            _killpg(job.process.pid, signal.SIGCONT)
        job.kill_at = time.time() + self.cfg.kill_grace

    def _remove(self, job: Job, reason: str) -> None:
        job.ad["RemoveReason"] = reason
        self._set_status(job, REMOVED)
        if job.process is not None:
            self._kill(job, "leave")
        else:
            self._leave_queue(job)

    def _hold(self, job: Job, reason: str, code: int, subcode: int = 0) -> None:
        job.ad["HoldReason"] = reason
        job.ad["HoldReasonCode"] = code
        job.ad["HoldReasonSubCode"] = subcode
        job.ad["NumHolds"] = _int_attr(job.ad, "NumHolds", 0) + 1
        self._set_status(job, HELD)
        if job.process is not None:
            self._kill(job, "stay")
        log.info("job %d.%d held: %s", *job.key, reason)

    def _release(self, job: Job, reason: str) -> None:
        for attr in ("HoldReason", "HoldReasonCode", "HoldReasonSubCode"):
            if attr in job.ad:
                job.ad["Last" + attr] = job.ad.lookup(attr)
                del job.ad[attr]
        job.ad["ReleaseReason"] = reason
        self._set_status(job, IDLE)
        job.idle_since = time.time()

    def _leave_queue(self, job: Job) -> None:
        self.jobs.pop(job.key, None)
        self.history.append(job.ad)
        log.info("job %d.%d left the queue (status %d)", *job.key, job.status)

    # --- the scheduler loop ------------------------------------------------------------------

    async def run_scheduler(self) -> None:
        """Reap, escalate kills, evaluate policies, start idle jobs: every ``poll`` seconds."""
        while not self.stop.is_set():
            try:
                self.step(time.time())
            except Exception:
                log.exception("scheduler step failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=self.cfg.poll)

    def step(self, now: float) -> None:
        """One scheduler pass."""
        for job in list(self.jobs.values()):
            if job.process is not None and job.process.poll() is not None:
                self._process_exited(job, job.process.returncode)
            elif job.process is not None and job.kill_at is not None and now >= job.kill_at:
                _killpg(job.process.pid, signal.SIGKILL)
                job.kill_at = None
        if now - self.last_periodic >= self.cfg.tick:
            self.last_periodic = now
            self._periodic()
        for job in list(self.jobs.values()):
            linger_over = (
                job.completed_at is not None and now - job.completed_at >= self.cfg.completed_linger
            )
            if job.status == COMPLETED and linger_over and not _policy(job.ad, "LeaveJobInQueue"):
                self._leave_queue(job)
        self._start_idle(now)
        if self.cfg.exit_with_pid is not None:
            try:
                os.kill(self.cfg.exit_with_pid, 0)
            except ProcessLookupError:
                log.warning("process %d is gone; shutting down", self.cfg.exit_with_pid)
                self.stop.set()
            except PermissionError:
                pass

    def _periodic(self) -> None:
        """PeriodicHold / PeriodicRelease / PeriodicRemove, evaluated by classad2 (time() = now)."""
        for job in list(self.jobs.values()):
            if job.after_exit != "complete":
                continue  # already being removed/held/vacated
            status = job.status
            if status in (IDLE, RUNNING, SUSPENDED):
                fired = _policy(job.ad, "PeriodicHold")
                if fired is not False:
                    self._policy_hold(job, "PeriodicHold", fired)
                    continue
            if status == HELD and _policy(job.ad, "PeriodicRelease"):
                expr = job.ad.lookup("PeriodicRelease")
                reason = f"The job attribute PeriodicRelease expression '{expr}' evaluated to TRUE"
                self._release(job, reason)
                continue
            if status in (IDLE, RUNNING, SUSPENDED, HELD):
                fired = _policy(job.ad, "PeriodicRemove")
                if fired:
                    expr = job.ad.lookup("PeriodicRemove")
                    reason = (
                        f"The job attribute PeriodicRemove expression '{expr}' evaluated to TRUE"
                    )
                    log.info("job %d.%d: %s", *job.key, reason)
                    self._remove(job, reason)
                elif fired is None and status != HELD:
                    self._policy_hold(job, "PeriodicRemove", None)

    def _policy_hold(self, job: Job, attr: str, fired: bool | None) -> None:
        """Hold a job because a policy fired (code 3) or evaluated to UNDEFINED (code 5)."""
        expr = job.ad.lookup(attr)
        if fired is None:
            reason = f"The job attribute {attr} expression '{expr}' evaluated to UNDEFINED"
            self._hold(job, reason, 5, 0)
            return
        prefix = "PeriodicHold" if attr == "PeriodicHold" else "OnExitHold"
        reason = _str_attr(job.ad, prefix + "Reason") or (
            f"The job attribute {attr} expression '{expr}' evaluated to TRUE"
        )
        self._hold(job, reason, 3, _int_attr(job.ad, prefix + "SubCode", 0))

    def _start_idle(self, now: float) -> None:
        used = {j.slot for j in self.jobs.values() if j.slot is not None}
        free = [s for s in range(1, self.cfg.slots + 1) if s not in used]
        if not free:
            return
        ready = [
            j
            for j in self.jobs.values()
            if j.status == IDLE
            and j.process is None
            and now - j.idle_since >= self.cfg.start_latency
        ]
        ready.sort(key=lambda j: (-_int_attr(j.ad, "JobPrio", 0), j.key))
        for job, slot in zip(ready, free, strict=False):
            self._start(job, slot)

    # --- running a job -----------------------------------------------------------------------

    def _start(self, job: Job, slot: int) -> None:
        """Set up the scratch dir, transfer inputs and exec the job in its own process group."""
        ad = job.ad
        cluster, proc = job.key
        host = f"slot{slot}@{self.cfg.name}"
        starts = _int_attr(ad, "NumJobStarts", 0)
        iwd = Path(_str_attr(ad, "Iwd", "/"))
        scratch = self.cfg.workdir / "execute" / f"dir_{cluster}.{proc}_{starts + 1}"
        files: list[IO[bytes]] = []
        try:
            if not iwd.is_dir():
                raise _StartFailure(
                    14, errno.ENOENT, f"Error from {host}: Failed to access Iwd {iwd}"
                )
            scratch.mkdir(parents=True, exist_ok=True)
            transfer = _str_attr(ad, "ShouldTransferFiles", "IF_NEEDED").upper() != "NO"
            if transfer:
                self._transfer_inputs(ad, iwd, scratch, host)
            argv = [self._executable(ad, scratch, transfer, host), *job_argv_tail(ad)]
            env = self._job_env(ad, scratch, iwd, slot)
            stdin = self._open(ad, "In", iwd, "rb", 8, host, files)
            stdout = self._open(ad, "Out", iwd, "wb", 7, host, files)
            same = _str_attr(ad, "Err") == _str_attr(ad, "Out") and stdout is not None
            stderr = stdout if same else self._open(ad, "Err", iwd, "wb", 7, host, files)
            now = int(time.time())
            running = {
                "JobStatus": RUNNING,
                "LastJobStatus": IDLE,
                "EnteredCurrentStatus": now,
                "JobCurrentStartDate": now,
                "NumJobStarts": starts + 1,
                "RemoteHost": host,
            }
            if "JobStartDate" not in ad:
                running["JobStartDate"] = now
            job_ad_text = self._job_ad_text(ad, running)
            (scratch / ".job.ad").write_text(job_ad_text)
            (scratch / ".machine.ad").write_text(self._machine_ad(host, slot).printOld())
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=scratch if transfer else iwd,
                    env=env,
                    stdin=stdin or subprocess.DEVNULL,
                    stdout=stdout or subprocess.DEVNULL,
                    stderr=stderr or subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                args = " ".join(argv[1:])
                with_args = f" with arguments {args}" if args else ""
                cmd = _str_attr(ad, "Cmd")
                raise _StartFailure(
                    6,
                    exc.errno or 0,
                    f"Error from {host}: Failed to execute '{cmd}'{with_args}: "
                    f"(errno={exc.errno}: '{exc.strerror}')",
                ) from exc
        except _StartFailure as failure:
            for f in files:
                f.close()
            if not self.cfg.keep_scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            self._hold(job, failure.reason, failure.code, failure.subcode)
            return
        ad.update(running)
        job.process, job.scratch, job.slot, job.files = process, scratch, slot, files
        job.after_exit, job.kill_at = "complete", None
        log.info("job %d.%d started as pid %d on %s", cluster, proc, process.pid, host)

    def _transfer_inputs(self, ad: classad2.ClassAd, iwd: Path, scratch: Path, host: str) -> None:
        for entry in [e.strip() for e in _str_attr(ad, "TransferInput").split(",") if e.strip()]:
            path = entry[len("file://") :] if entry.startswith("file://") else entry
            if "://" in path:
                raise _StartFailure(
                    13, 0, f"Error from {host}: the stand-in cannot transfer URL {entry}"
                )
            src = Path(path) if os.path.isabs(path) else iwd / path
            try:
                if src.is_dir():
                    dest = scratch if path.endswith("/") else scratch / src.name
                    shutil.copytree(src, dest, dirs_exist_ok=True)
                elif src.is_file():
                    shutil.copy2(src, scratch / src.name)
                else:
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory")
            except OSError as exc:
                raise _StartFailure(
                    13,
                    exc.errno or 0,
                    f"Error from {host}: Transfer input files failure at access point "
                    f"{self.cfg.name} while sending files to execution point {host}. "
                    f"Details: reading from file {src}: (errno {exc.errno}) {exc.strerror}",
                ) from exc

    def _executable(self, ad: classad2.ClassAd, scratch: Path, transfer: bool, host: str) -> str:
        cmd = _str_attr(ad, "Cmd")
        transfer_exe = _policy(ad, "TransferExecutable") if "TransferExecutable" in ad else True
        if not (transfer and transfer_exe):
            return cmd
        dest = scratch / "condor_exec.exe"
        try:
            shutil.copy2(cmd, dest)
        except OSError as exc:
            raise _StartFailure(
                13,
                exc.errno or 0,
                f"Error from {host}: Transfer input files failure at access point "
                f"{self.cfg.name} while sending files to execution point {host}. "
                f"Details: reading from file {cmd}: (errno {exc.errno}) {exc.strerror}",
            ) from exc
        dest.chmod(0o755)
        return str(dest)

    def _job_env(self, ad: classad2.ClassAd, scratch: Path, iwd: Path, slot: int) -> dict[str, str]:
        """A minimal base environment + the job's own, never the daemon's whole environment."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        env.update(job_environment(ad))
        for name in ("TMPDIR", "TMP", "TEMP"):
            env.setdefault(name, str(scratch))
        env.setdefault("OMP_NUM_THREADS", str(_int_attr(ad, "RequestCpus", 1)))
        env.update(
            {
                "_CONDOR_SCRATCH_DIR": str(scratch),
                "_CONDOR_JOB_AD": str(scratch / ".job.ad"),
                "_CONDOR_MACHINE_AD": str(scratch / ".machine.ad"),
                "_CONDOR_JOB_IWD": str(iwd),
                "_CONDOR_SLOT": f"slot{slot}",
                "BATCH_SYSTEM": "HTCondor",
            }
        )
        return env

    def _open(
        self,
        ad: classad2.ClassAd,
        attr: str,
        iwd: Path,
        mode: str,
        code: int,
        host: str,
        files: list[IO[bytes]],
    ) -> IO[bytes] | None:
        name = _str_attr(ad, attr, "/dev/null") or "/dev/null"
        if name == "/dev/null":
            return None
        path = Path(name) if os.path.isabs(name) else iwd / name
        try:
            handle: IO[bytes] = open(path, mode)  # closed when the job ends
        except OSError as exc:
            what = "standard input" if attr == "In" else "standard output/error"
            raise _StartFailure(
                code,
                exc.errno or 0,
                f"Error from {host}: Failed to open '{path}' as {what}: "
                f"{exc.strerror} (errno {exc.errno})",
            ) from exc
        files.append(handle)
        return handle

    def _job_ad_text(self, ad: classad2.ClassAd, updates: dict[str, Any]) -> str:
        copy = classad2.ClassAd()
        copy.update({k: ad.lookup(k) for k in ad.keys()})
        copy.update(updates)
        return copy.printOld()

    def _machine_ad(self, host: str, slot: int) -> classad2.ClassAd:
        return classad2.ClassAd(
            {
                "MyType": "Machine",
                "Name": host,
                "SlotID": slot,
                "Machine": self.cfg.name,
                "OpSys": "LINUX",
                "Arch": "X86_64",
            }
        )

    def _process_exited(self, job: Job, returncode: int) -> None:
        """Bookkeeping when a job's process has ended, for whatever reason."""
        assert job.process is not None
        _killpg(job.process.pid, signal.SIGKILL)  # the job's leftover children, like the starter
        for f in job.files:
            f.close()
        ad = job.ad
        after, scratch = job.after_exit, job.scratch
        job.process, job.files, job.kill_at, job.after_exit = None, [], None, "complete"
        if "RemoteHost" in ad:
            ad["LastRemoteHost"] = ad.lookup("RemoteHost")
            del ad["RemoteHost"]
        job.slot = None
        transfer_error = None
        if after == "complete" and scratch is not None:
            transfer_error = self._transfer_outputs(ad, scratch)
        if scratch is not None and not self.cfg.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("job %d.%d process ended (%d), then %s", *job.key, returncode, after)
        if after == "leave":
            self._leave_queue(job)
            return
        if after == "stay":
            return
        if after == "idle":
            self._set_status(job, IDLE)
            job.idle_since = time.time()
            return
        if returncode >= 0:
            ad["ExitCode"] = returncode
            ad["ExitBySignal"] = False
        else:
            ad["ExitBySignal"] = True
            ad["ExitSignal"] = -returncode
        if transfer_error is not None:
            self._hold(job, transfer_error, 12, errno.ENOENT)
            return
        on_hold = _policy(ad, "OnExitHold")
        if on_hold is not False:
            self._policy_hold(job, "OnExitHold", on_hold)
            return
        on_remove = _policy(ad, "OnExitRemove") if "OnExitRemove" in ad else True
        if on_remove is None:
            self._policy_hold(job, "OnExitRemove", None)
        elif not on_remove:
            self._set_status(job, IDLE)
            job.idle_since = time.time()
        else:
            ad["CompletionDate"] = int(time.time())
            self._set_status(job, COMPLETED)
            job.completed_at = time.time()

    def _transfer_outputs(self, ad: classad2.ClassAd, scratch: Path) -> str | None:
        """Copy ``transfer_output_files`` back to Iwd; an error text when one is missing."""
        if _str_attr(ad, "ShouldTransferFiles", "IF_NEEDED").upper() == "NO":
            return None
        iwd = Path(_str_attr(ad, "Iwd", "/"))
        for entry in [e.strip() for e in _str_attr(ad, "TransferOutput").split(",") if e.strip()]:
            src = scratch / entry
            try:
                if src.is_dir():
                    shutil.copytree(src, iwd / src.name, dirs_exist_ok=True)
                else:
                    shutil.copy2(src, iwd / src.name)
            except OSError as exc:
                return (
                    f"Transfer output files failure at access point {self.cfg.name} while "
                    f"receiving files from the execution point. Details: reading from file "
                    f"{src}: (errno {exc.errno}) {exc.strerror}"
                )
        return None

    async def shutdown_jobs(self) -> None:
        """Kill every job's process group (TERM, then KILL), bounded in time."""
        running = [j for j in self.jobs.values() if j.process is not None]
        for job in running:
            assert job.process is not None
            _killpg(job.process.pid, signal.SIGTERM)
            _killpg(job.process.pid, signal.SIGCONT)
        for _ in range(int(min(self.cfg.kill_grace, 3.0) / 0.05)):
            if all(j.process is None or j.process.poll() is not None for j in running):
                break
            await asyncio.sleep(0.05)
        for job in running:
            assert job.process is not None
            _killpg(job.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.process.wait(timeout=2)
            for f in job.files:
                f.close()
            if job.scratch is not None and not self.cfg.keep_scratch:
                shutil.rmtree(job.scratch, ignore_errors=True)
        log.info("killed %d running jobs at shutdown", len(running))


async def serve(cfg: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT, a ``shutdown`` request or ``exit_with_pid`` dies."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    state = ScheddState(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, state.stop.set)
    with contextlib.suppress(FileNotFoundError):
        cfg.socket.unlink()
    server = await asyncio.start_unix_server(
        state.handle, path=str(cfg.socket), limit=MAX_REQUEST_BYTES
    )
    scheduler = asyncio.create_task(state.run_scheduler())
    log.info("stand-in schedd %s listening on %s (pid %d)", cfg.name, cfg.socket, os.getpid())
    try:
        await state.stop.wait()
    finally:
        server.close()
        state.stop.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(scheduler, timeout=2)
        await state.shutdown_jobs()
        with contextlib.suppress(FileNotFoundError):
            cfg.socket.unlink()
        log.info("stand-in schedd stopped")
    return 0


def parse_args(argv: list[str] | None = None) -> Config:
    """Command-line options -> Config."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, type=Path, help="Unix socket to listen on")
    p.add_argument("--workdir", required=True, type=Path, help="where job scratch dirs go")
    p.add_argument("--slots", type=int, default=4, help="jobs that may run at once")
    p.add_argument("--start-latency", type=float, default=0.0, help="min seconds Idle")
    p.add_argument("--tick", type=float, default=1.0, help="periodic policy period (s)")
    p.add_argument("--poll", type=float, default=0.05, help="scheduler loop period (s)")
    p.add_argument("--kill-grace", type=float, default=3.0, help="SIGTERM -> SIGKILL (s)")
    p.add_argument("--completed-linger", type=float, default=0.0, help="completed jobs stay (s)")
    p.add_argument("--history-size", type=int, default=1000)
    p.add_argument("--keep-scratch", action="store_true", help="keep job scratch dirs")
    p.add_argument("--name", default="standin", help="schedd / machine name in ads")
    p.add_argument("--exit-with-pid", type=int, default=None, help="stop when this pid dies")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return Config(
        socket=a.socket.absolute(),
        workdir=a.workdir.absolute(),
        slots=a.slots,
        start_latency=a.start_latency,
        tick=a.tick,
        poll=a.poll,
        kill_grace=a.kill_grace,
        completed_linger=a.completed_linger,
        history_size=a.history_size,
        keep_scratch=a.keep_scratch,
        name=a.name,
        exit_with_pid=a.exit_with_pid,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m ...htcondor_standin.daemon``."""
    return asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
