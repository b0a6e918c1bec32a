"""Slurm job states and pending reasons, in words an analyst can act on.

The analyst reads these in ``cluster.details()``; Slurm's own reason code stays
in parentheses, so it can be searched for or quoted to the site's admins.
"""

from __future__ import annotations

from ..base import Check, Phase
from .client import JobRecord

#: Why a job is pending, by Slurm reason code (``squeue``'s ``state_reason``).
PENDING_REASONS = {
    "Resources": "waiting for free CPUs, memory or GPUs in the partition",
    "Priority": "waiting behind jobs of higher priority",
    "Dependency": "waiting for another job",
    "BeginTime": "waiting for its start time",
    "PartitionDown": "the partition is down; the site has to bring it back",
    "PartitionInactive": "the partition is inactive; the site has to bring it back",
    "PartitionNodeLimit": "the partition's node limit does not allow the job",
    "PartitionTimeLimit": "the partition's time limit is below the job's",
    "ReqNodeNotAvail": "the nodes the job needs are unavailable (down, drained or reserved)",
    "NodeDown": "a node the job needs is down",
    "Reservation": "waiting for a reservation",
    "JobHeldUser": "held (by the gateway's account)",
    "JobHeldAdmin": "held by a Slurm administrator",
    "QOSMaxCpuPerUserLimit": "your QOS's limit on CPUs per user is reached",
    "QOSMaxJobsPerUserLimit": "your QOS's limit on running jobs per user is reached",
    "QOSMaxMemoryPerUser": "your QOS's limit on memory per user is reached",
    "QOSMaxGRESPerUser": "your QOS's limit on GPUs per user is reached",
    "QOSGrpCpuLimit": "the QOS's CPU limit is reached",
    "QOSGrpMemLimit": "the QOS's memory limit is reached",
    "QOSGrpGRES": "the QOS's GPU limit is reached",
    "AssocGrpCpuLimit": "the account's CPU limit is reached",
    "AssocGrpMemLimit": "the account's memory limit is reached",
    "AssocGrpGRES": "the account's GPU limit is reached",
    "AssocMaxJobsLimit": "the account's limit on running jobs is reached",
    "AssocGrpJobsLimit": "the account's limit on running jobs is reached",
    "InvalidAccount": "the account is not valid for this partition (ask the site)",
    "InvalidQOS": "the QOS is not valid for this account (ask the site)",
    "Licenses": "waiting for licenses",
}

#: How a job ended, by Slurm job state.
END_STATES = {
    "TIMEOUT": "the job reached its time limit",
    "OUT_OF_MEMORY": "the worker ran out of memory",
    "NODE_FAIL": "the node running the job failed",
    "BOOT_FAIL": "the node could not boot for the job",
    "PREEMPTED": "the job was preempted by the site",
    "DEADLINE": "the job reached its deadline",
    "CANCELLED": "the job was cancelled",
    "FAILED": "the job failed",
    "COMPLETED": "the worker exited",
}


def pending_words(reason: str) -> str:
    """Why a job is pending, for the analyst (Slurm's code in parentheses)."""
    if reason in ("", "None"):
        return "queued in Slurm, not scheduled yet"
    words = PENDING_REASONS.get(reason)
    if words is None and reason.startswith(("QOS", "Assoc")):
        words = "a limit of the account or QOS is reached"
    return f"{words or 'pending in Slurm'} ({reason})"


def exit_words(status: int) -> str:
    """A wait status (``squeue``'s ``exit_code``) as words."""
    if status & 0x7F:
        return f"killed by signal {status & 0x7F}"
    return f"exit code {status >> 8}"


def job_check(job: JobRecord, log_line: str = "") -> Check:
    """A worker's ``Check`` from its array task."""
    if job.state in ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"):
        return Check(Phase.RUNNING)
    if job.state == "PENDING":
        return Check(Phase.PENDING, pending_words(job.reason))
    if job.state in ("CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESIZING"):
        return Check(Phase.PENDING, f"being started by Slurm ({job.state})")
    if job.state in ("SUSPENDED", "STOPPED"):
        return Check(Phase.PENDING, f"suspended by Slurm ({job.state})")
    words = END_STATES.get(job.state, f"the job ended ({job.state})")
    if job.state in ("FAILED", "COMPLETED", "CANCELLED") and job.exit_code:
        words += f" ({exit_words(job.exit_code)})"
    if job.reason not in ("", "None", "NonZeroExitCode"):
        words += f" [{job.reason}]"
    if log_line:
        words += f": {log_line}"
    return Check(Phase.FAILED, words)
