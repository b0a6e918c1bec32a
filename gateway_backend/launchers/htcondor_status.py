"""The HTCondor launcher's status cache: which jobs to ask the schedd for, and reading them.

At facility scale (20,000 jobs of one gateway) parsing every job ad every
status period costs more CPU than everything else the gateway does, so a
period asks only for what changed: jobs whose ``EnteredCurrentStatus`` is at
or after the schedd's clock at the previous query (``ServerTime``), and jobs
known to be on their way out. Jobs that leave the queue without being seen
doing so show up as a wrong count in the lease renewal, which matches every
job; that, and a timer, trigger a full query. ``parse_ads`` runs in the
thread that made the schedd call; the rest is bookkeeping on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import Check, Phase
from .exit_reasons import MEMORY_ADVICE, MEMORY_KILLED, exit_text

# JobStatus values (htcondor2.JobStatus)
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)
LEAVING = (REMOVED, COMPLETED)  # a job in these states is about to leave the queue

MAX_REASON = 300  # characters of a hold/idle reason kept per job

#: Only the attributes the cache reads (each one costs parsing time on 20,000 ads).
PROJECTION = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "DaskGatewayWorker",
    "HoldReason",
    "HoldReasonCode",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "EnteredCurrentStatus",
    "LastRejMatchReason",
    "ServerTime",
]


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What the status cache knows about one job."""

    job_id: str
    worker: str
    status: int
    hold_reason: str = ""
    why_idle: str = ""
    check: Check | None = field(default=None, compare=False)
    """What a status check answers for this job (None when it ended: the log says how)."""
    ended: str = field(default="", compare=False)
    """How a completed job's process ended (``exited with code 3``), if the ad says."""


# HoldReasonCode 34: the job used more memory (or disk) than it requested (the execute
# point's policy); older pools hold with their own code and a memory message.
OUT_OF_RESOURCES = 34


def held_text(hold_reason: str, code: int | None) -> str:
    """``job held: <HoldReason>``, in memory words where HTCondor held it for memory."""
    if code == OUT_OF_RESOURCES or "memory" in hold_reason.lower():
        return f"job held: {MEMORY_KILLED} ({hold_reason}): {MEMORY_ADVICE}"
    return f"job held: {hold_reason}"


def ended_text(ad: Mapping[str, Any]) -> str:
    """How a completed job's process ended, from ``ExitBySignal``/``ExitSignal``/``ExitCode``."""
    try:
        if ad["ExitBySignal"] is True:
            return exit_text(signum=int(ad["ExitSignal"]))
        return exit_text(int(ad["ExitCode"]))
    except (KeyError, TypeError, ValueError):
        return ""


def job_check(
    status: int, hold_reason: str, why_idle: str, hold_code: int | None = None
) -> Check | None:
    """The worker's check for a job in the queue; None for an ended job (read its log)."""
    if status == HELD:
        return Check(Phase.FAILED, held_text(hold_reason, hold_code))
    if status in LEAVING:
        return None
    if status == RUNNING:
        return Check(Phase.RUNNING)
    why = "idle in the schedd queue, waiting for a slot"
    return Check(Phase.PENDING, f"{why} ({why_idle})" if why_idle else why)


@dataclass
class QueryResult:
    """Jobs by worker name from one query, and the schedd's clock when it answered."""

    jobs: dict[str, JobInfo]
    server_time: int | None


def changes_constraint(instance: str, since: int) -> str:
    """Jobs of ``instance`` (a constraint) that changed status at or after ``since``,
    or are leaving the queue (so the cache sees them go)."""
    return (
        f"({instance}) && (EnteredCurrentStatus >= {int(since)} || "
        f"JobStatus == {REMOVED} || JobStatus == {COMPLETED})"
    )


def _text(ad: Mapping[str, Any], key: str) -> str:
    try:
        return str(ad[key])[:MAX_REASON]
    except KeyError:
        return ""


def _int(ad: Mapping[str, Any], key: str) -> int | None:
    try:
        return int(ad[key])
    except (KeyError, TypeError, ValueError):
        return None


def parse_ads(ads: Iterable[Mapping[str, Any]]) -> QueryResult:
    """Job ads (``classad2.ClassAd`` or dicts) as ``JobInfo`` by worker name.

    The schedd's clock is the smallest ``ServerTime`` of the answer (the time it
    started answering), or None when the schedd did not send one.
    """
    jobs: dict[str, JobInfo] = {}
    server_time: int | None = None
    for ad in ads:
        try:
            status = int(ad["JobStatus"])
        except KeyError:
            status = IDLE
        worker = str(ad["DaskGatewayWorker"]) if "DaskGatewayWorker" in ad else ""
        hold_reason = _text(ad, "HoldReason") if status == HELD else ""
        hold_code = _int(ad, "HoldReasonCode") if status == HELD else None
        why_idle = _text(ad, "LastRejMatchReason") if status == IDLE else ""
        jobs[worker] = JobInfo(
            job_id=f"{ad['ClusterId']}.{ad['ProcId']}",
            worker=worker,
            status=status,
            hold_reason=hold_reason,
            why_idle=why_idle,
            check=job_check(status, hold_reason, why_idle, hold_code),
            ended=ended_text(ad) if status == COMPLETED else "",
        )
        if "ServerTime" in ad:
            t = int(ad["ServerTime"])
            server_time = t if server_time is None else min(server_time, t)
    return QueryResult(jobs, server_time)


def mark_removed(cache: dict[str, JobInfo], workers: Iterable[str]) -> None:
    """Jobs of ``workers`` were removed by this gateway: expect them to leave the queue."""
    for worker in workers:
        job = cache.get(worker)
        if job is not None and job.status not in LEAVING:
            cache[worker] = JobInfo(job.job_id, job.worker, REMOVED)


def merge_changes(cache: dict[str, JobInfo], changes: QueryResult) -> None:
    """Fold a changes-only answer into ``cache`` (in place).

    Jobs the cache holds as leaving (removed or completed) that the answer no
    longer lists have left the queue.
    """
    gone = [w for w, job in cache.items() if job.status in LEAVING and w not in changes.jobs]
    for worker in gone:
        del cache[worker]
    cache.update(changes.jobs)


def count_is_plausible(
    matched: Any, cache: Mapping[str, JobInfo], removed: Iterable[str], submitted: int
) -> bool:
    """Whether the lease renewal's job count fits the cache.

    Jobs leaving (removed or completed, also removed since the query) may have
    left or not yet; jobs submitted since the query may be counted already.
    Anything else means jobs left unseen (or the schedd gave no count): the
    cache needs a full query.
    """
    if not isinstance(matched, int) or isinstance(matched, bool):
        return False
    removed = set(removed)
    leaving = sum(1 for w, job in cache.items() if job.status in LEAVING or w in removed)
    return len(cache) - leaving <= matched <= len(cache) + submitted
