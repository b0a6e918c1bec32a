"""The job queue: job records and their ads, the schedd methods that read and change them,
state transitions, and the periodic and on-exit policy expressions.

Every constraint and policy is evaluated by the real ``classad2``. Processes are reached only
through a job's ``Run`` (``starter.py``); which job runs where is the negotiator's business.
Every change is collected into one transaction that ``commit()`` writes to the job queue log
(``joblog.py``) before the daemon answers or moves on, so a restarted daemon finds it again.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import getpass
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import classad2
import htcondor2

from .classads import (
    COMPLETED,
    HELD,
    IDLE,
    REMOVED,
    RUNNING,
    SUSPENDED,
    int_attr,
    matches,
    policy,
    str_attr,
)
from .config import Config
from .jobads import SubmitContext, SubmitError, expand_submit
from .joblog import JobLog
from .protocol import RequestError, ad_texts
from .starter import Run, StartFailure

log = logging.getLogger("htcondor_standin")

#: Attributes the real schedd refuses to let ``edit`` change.
PROTECTED_ATTRS = frozenset(
    a.lower()
    for a in ("ClusterId", "ProcId", "Owner", "User", "JobStatus", "MyType", "GlobalJobId")
)


@dataclass
class Job:
    """One proc: its ad, and its Run while a process exists for it."""

    ad: classad2.ClassAd
    idle_since: float
    run: Run | None = None
    #: What the end of the running process means: complete, leave (removed), stay (held),
    #: idle (vacated).
    after_exit: str = "complete"
    kill_at: float | None = None
    completed_at: float | None = None

    @property
    def key(self) -> tuple[int, int]:
        return int(self.ad["ClusterId"]), int(self.ad["ProcId"])

    @property
    def status(self) -> int:
        return int(self.ad["JobStatus"])


def compile_constraint(constraint: str) -> classad2.ExprTree:
    """A query/act/edit constraint as a classad2 expression; an HTCondorException if invalid."""
    text = constraint.strip() or "true"
    try:
        return classad2.ExprTree(text)
    except Exception as exc:
        raise RequestError("HTCondorException", f"Invalid constraint: {constraint!r}") from exc


class JobQueue:
    """The jobs in the queue (by (cluster, proc)) and a bounded history of those that left."""

    def __init__(self, cfg: Config, joblog: JobLog | None = None) -> None:
        self.cfg = cfg
        self.jobs: dict[tuple[int, int], Job] = {}
        self.history: collections.deque[classad2.ClassAd] = collections.deque(
            maxlen=cfg.history_size
        )
        self.next_cluster = 1
        self.owner = getpass.getuser()
        self.joblog = joblog
        # The transaction being collected: jobs changed, edits, jobs that left the queue.
        self._dirty: set[tuple[int, int]] = set()
        self._edits: list[list[Any]] = []
        self._left: dict[str, str] = {}
        self._logged_next = 1

    # --- the job queue log -------------------------------------------------------------------

    def touch(self, job: Job) -> None:
        """``job`` changed: its record goes into the next committed transaction."""
        self._dirty.add(job.key)

    def record(self, job: Job) -> dict[str, Any]:
        """What the log keeps of a job: its ad, the pending exit meaning, its starter."""
        return {
            "ad": str(job.ad),
            "after": job.after_exit,
            "run": job.run.record() if job.run is not None else None,
            "completed_at": job.completed_at,
        }

    def commit(self) -> None:
        """Write the changes collected since the last commit as one transaction (if any)."""
        txn: dict[str, Any] = {}
        if self.next_cluster != self._logged_next:
            txn["next"] = self._logged_next = self.next_cluster
        if self._edits:
            txn["edits"] = self._edits
        live = [key for key in self._dirty if key in self.jobs]
        jobs = {"{}.{}".format(*key): self.record(self.jobs[key]) for key in live}
        if jobs:
            txn["jobs"] = jobs
        if self._left:
            txn["left"] = self._left
        self._dirty, self._edits, self._left = set(), [], {}
        if txn and self.joblog is not None:
            self.joblog.append(txn)

    def compact(self) -> None:
        """Rewrite the log from the current state (at start, after replay)."""
        self._dirty, self._edits, self._left = set(), [], {}
        self._logged_next = self.next_cluster
        if self.joblog is not None:
            records = {f"{c}.{p}": self.record(j) for (c, p), j in sorted(self.jobs.items())}
            self.joblog.rewrite(self.next_cluster, records, [str(ad) for ad in self.history])

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
            self.touch(job)
        log.info("submitted cluster %d with %d procs", ctx.cluster_id, len(expanded.ads))
        return {
            "cluster": ctx.cluster_id,
            "first_proc": 0,
            "num_procs": len(expanded.ads),
            "cluster_ad": str(expanded.cluster_ad),
        }

    def op_query(self, args: dict[str, Any]) -> list[str]:
        """Job ads matching a constraint, projected, in (cluster, proc) order."""
        expr = compile_constraint(str(args.get("constraint", "true")))
        projection = [str(p) for p in args.get("projection") or []]
        limit = int(args.get("limit", -1))
        out: list[classad2.ClassAd] = []
        for key in sorted(self.jobs):
            ad = self.jobs[key].ad
            if not matches(expr, ad):
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
        expr = compile_constraint(spec)
        return [self.jobs[k] for k in sorted(self.jobs) if matches(expr, self.jobs[k].ad)], 0

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
        being_killed = job.run is not None and job.after_exit != "complete"
        if action in (htcondor2.JobAction.Remove, htcondor2.JobAction.RemoveX):
            if status == REMOVED:
                if action == htcondor2.JobAction.RemoveX and job.run is not None:
                    job.run.signal(signal.SIGKILL)
                    return "TotalSuccess"
                return "TotalAlreadyDone"
            self._remove(job, text)
            return "TotalSuccess"
        if action == htcondor2.JobAction.Hold:
            if status == HELD:
                return "TotalAlreadyDone"
            if status not in (IDLE, RUNNING, SUSPENDED) or being_killed:
                return "TotalBadStatus"
            self.hold(job, text, 1, subcode)
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
            if status != RUNNING or job.run is None or being_killed:
                return "TotalBadStatus"
            job.run.signal(signal.SIGSTOP)
            self._set_status(job, SUSPENDED)
            return "TotalSuccess"
        if action == htcondor2.JobAction.Continue:
            if status != SUSPENDED or job.run is None:
                return "TotalBadStatus"
            job.run.signal(signal.SIGCONT)
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
        if jobs:
            self._edits.append([attr, value, [f"{c}.{p}" for c, p in (j.key for j in jobs)]])
        log.info("edit %s = %s on %d jobs", attr, value, len(jobs))
        return len(jobs)

    def snapshot(self, queue: bool = True, history: bool = True) -> list[str]:
        """Ads of jobs that left the queue (oldest first), then the queue, as wire text."""
        in_queue = [self.jobs[k].ad for k in sorted(self.jobs)] if queue else []
        left = list(self.history) if history else []
        return ad_texts([*left, *in_queue])

    # --- state transitions -------------------------------------------------------------------

    def _set_status(self, job: Job, status: int) -> None:
        self.touch(job)
        job.ad["LastJobStatus"] = job.status
        job.ad["JobStatus"] = status
        job.ad["EnteredCurrentStatus"] = int(time.time())

    def _kill(self, job: Job, after: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the job's process group; SIGKILL follows after the grace period."""
        assert job.run is not None
        self.touch(job)
        job.after_exit = after
        job.run.signal(sig)
        if job.status == SUSPENDED:
            job.run.signal(signal.SIGCONT)
        job.kill_at = time.time() + self.cfg.kill_grace

    def _remove(self, job: Job, reason: str) -> None:
        job.ad["RemoveReason"] = reason
        self._set_status(job, REMOVED)
        if job.run is not None:
            self._kill(job, "leave")
        else:
            self._leave_queue(job)

    def hold(self, job: Job, reason: str, code: int, subcode: int = 0) -> None:
        """Put ``job`` on hold with HTCondor's reason and code, stopping its process."""
        job.ad["HoldReason"] = reason
        job.ad["HoldReasonCode"] = code
        job.ad["HoldReasonSubCode"] = subcode
        job.ad["NumHolds"] = int_attr(job.ad, "NumHolds", 0) + 1
        self._set_status(job, HELD)
        if job.run is not None:
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
        self._dirty.discard(job.key)
        self._left["{}.{}".format(*job.key)] = str(job.ad)
        self.history.append(job.ad)
        log.info("job %d.%d left the queue (status %d)", *job.key, job.status)

    def started(self, job: Job, run: Run, running: dict[str, Any]) -> None:
        """The starter started ``job``: record its Run and the ad updates that say so."""
        job.ad.update(running)
        job.run, job.after_exit, job.kill_at = run, "complete", None
        self.touch(job)

    def process_exited(
        self,
        job: Job,
        returncode: int,
        transfer_error: str | None,
        start_failure: StartFailure | None = None,
    ) -> None:
        """Bookkeeping when a job's process has ended (and the starter cleaned up after it)."""
        ad = job.ad
        after = job.after_exit
        job.run, job.kill_at, job.after_exit = None, None, "complete"
        self.touch(job)
        if "RemoteHost" in ad:
            ad["LastRemoteHost"] = ad.lookup("RemoteHost")
            del ad["RemoteHost"]
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
        if start_failure is not None:
            self.hold(job, start_failure.reason, start_failure.code, start_failure.subcode)
            return
        if returncode >= 0:
            ad["ExitCode"] = returncode
            ad["ExitBySignal"] = False
        else:
            ad["ExitBySignal"] = True
            ad["ExitSignal"] = -returncode
        if transfer_error is not None:
            self.hold(job, transfer_error, 12, errno.ENOENT)
            return
        on_hold = policy(ad, "OnExitHold")
        if on_hold is not False:
            self._policy_hold(job, "OnExitHold", on_hold)
            return
        on_remove = policy(ad, "OnExitRemove") if "OnExitRemove" in ad else True
        if on_remove is None:
            self._policy_hold(job, "OnExitRemove", None)
        elif not on_remove:
            self._set_status(job, IDLE)
            job.idle_since = time.time()
        else:
            ad["CompletionDate"] = int(time.time())
            self._set_status(job, COMPLETED)
            job.completed_at = time.time()

    def drop_completed(self, now: float) -> None:
        """Completed jobs leave the queue once they have lingered, unless LeaveJobInQueue."""
        for job in list(self.jobs.values()):
            linger_over = (
                job.completed_at is not None and now - job.completed_at >= self.cfg.completed_linger
            )
            if job.status == COMPLETED and linger_over and not policy(job.ad, "LeaveJobInQueue"):
                self._leave_queue(job)

    # --- policy expressions ------------------------------------------------------------------

    def periodic(self) -> None:
        """PeriodicHold / PeriodicRelease / PeriodicRemove, evaluated by classad2 (time() = now)."""
        for job in list(self.jobs.values()):
            if job.after_exit != "complete":
                continue  # already being removed/held/vacated
            status = job.status
            if status in (IDLE, RUNNING, SUSPENDED):
                fired = policy(job.ad, "PeriodicHold")
                if fired is not False:
                    self._policy_hold(job, "PeriodicHold", fired)
                    continue
            if status == HELD and policy(job.ad, "PeriodicRelease"):
                expr = job.ad.lookup("PeriodicRelease")
                reason = f"The job attribute PeriodicRelease expression '{expr}' evaluated to TRUE"
                self._release(job, reason)
                continue
            if status in (IDLE, RUNNING, SUSPENDED, HELD):
                fired = policy(job.ad, "PeriodicRemove")
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
            self.hold(job, reason, 5, 0)
            return
        prefix = "PeriodicHold" if attr == "PeriodicHold" else "OnExitHold"
        reason = str_attr(job.ad, prefix + "Reason") or (
            f"The job attribute {attr} expression '{expr}' evaluated to TRUE"
        )
        self.hold(job, reason, 3, int_attr(job.ad, prefix + "SubCode", 0))
