"""Slurm's command-line interface, asynchronously, with machine-readable output only.

``sbatch --parsable`` (the job id), one ``squeue`` for every job of the gateway
and ``scancel``; each call an asyncio subprocess with a deadline, a
minimal environment (no gateway secret reaches Slurm or the jobs) and the
script on stdin. A controller that does not answer becomes ``LauncherUnavailable``;
a refusal (bad account, unknown partition) is a ``SlurmRefused`` with Slurm's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..base import LauncherUnavailable

#: Variables of the gateway's own environment Slurm commands may see; nothing else
#: (the gateway's secrets, cloud credentials) is passed on.
PASSED_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SLURM_CONF")

#: stderr of a command that could not talk to slurmctld (as opposed to a refusal).
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|"
    r"Zero Bytes were transmitted|Communication connection failure|Unable to establish|"
    r"Slurm backup controller in standby mode|Transport endpoint|"
    r"temporarily unable to accept job|Failed while looking for jobs|slurm_load_jobs",
    re.I,
)

#: Job states in which a job still holds (or waits for) resources: what scancel can end.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "COMPLETING",
    }
)


class SlurmRefused(Exception):
    """Slurm answered and said no (the message is Slurm's own, for the admin or analyst)."""


@dataclass(frozen=True)
class JobRecord:
    """One array task of this gateway, as ``squeue`` described it."""

    job_id: str  # "<array job>_<task>", what scancel takes
    array_id: str
    task: int
    comment: str
    state: str
    reason: str
    exit_code: int  # a wait status: exit code << 8, or the signal number

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def task_ids(spec: str) -> Iterator[int]:
    """The task ids of a pending array's ``array_task_string`` ("0-3,7", "0-99%10")."""
    spec = spec.split("%", 1)[0]
    for part in filter(None, spec.split(",")):
        first, _, last = part.partition("-")
        last, _, step = last.partition(":")
        yield from range(int(first), int(last or first) + 1, int(step or 1))


#: ``squeue --Format`` fields of the "fields" query, each unpadded (size 0) and ended by
#: the ASCII unit separator; the comment (ours, or any text) comes last.
SEPARATOR = "\x1f"
FIELDS = ("Name", "ArrayJobID", "ArrayTaskID", "State", "Reason", "exit_code")
FORMAT = ",".join(f"{field}:0{SEPARATOR}" for field in FIELDS) + ",Comment:0"


def field_records(output: str, job_name: str) -> list[JobRecord]:
    """This gateway's array tasks from ``squeue --noheader --Format=<FORMAT>`` output."""
    out = []
    for line in output.splitlines():
        parts = line.split(SEPARATOR, len(FIELDS))
        if len(parts) != len(FIELDS) + 1 or parts[0] != job_name:
            continue
        _, array_id, tasks, state, reason, exit_code, comment = parts
        if not array_id.isdigit() or array_id == "0" or not tasks or tasks == "N/A":
            continue
        try:
            ids = list(task_ids(tasks))
        except ValueError:
            continue
        common = {
            "array_id": array_id,
            "comment": "" if comment == "(null)" else comment,
            "state": state,
            "reason": reason,
            "exit_code": int(exit_code) if exit_code.isdigit() else 0,
        }
        out += [JobRecord(job_id=f"{array_id}_{t}", task=t, **common) for t in ids]
    return out


def job_records(document: Mapping, job_name: str) -> list[JobRecord]:
    """This gateway's array tasks (by job name) from a ``squeue --json`` document.

    A pending array is one record whose ``array_task_string`` lists its tasks; it
    becomes one ``JobRecord`` per task, so callers see tasks only.
    """
    out = []
    for job in document.get("jobs", []):
        if job.get("name") != job_name or not job.get("array_job_id"):
            continue
        array_id = str(job["array_job_id"])
        common = {
            "array_id": array_id,
            "comment": str(job.get("comment") or ""),
            "state": str(job.get("job_state") or ""),
            "reason": str(job.get("state_reason") or ""),
            "exit_code": int(job.get("exit_code") or 0),
        }
        task = job.get("array_task_id")
        tasks = [int(task)] if task is not None else list(task_ids(job["array_task_string"]))
        out += [JobRecord(job_id=f"{array_id}_{t}", task=t, **common) for t in tasks]
    return out


class SlurmClient:
    """Runs Slurm commands; counts them (``calls``), so tests and benchmarks can."""

    def __init__(
        self, bin_directory: str, slurm_conf: str, timeout: float, query: str = "fields"
    ) -> None:
        self.bin_directory = bin_directory
        self.timeout = timeout
        self.query = query
        env = {k: os.environ[k] for k in PASSED_VARIABLES if k in os.environ}
        if slurm_conf:
            env["SLURM_CONF"] = slurm_conf
        self.env = env
        self.calls = 0

    def _argv(self, command: str, args: Sequence[str]) -> list[str]:
        exe = os.path.join(self.bin_directory, command) if self.bin_directory else command
        return [exe, *args]

    async def run(self, command: str, *args: str, stdin: bytes | None = None) -> str:
        """One command; its stdout. Unreachable controller: ``LauncherUnavailable``."""
        self.calls += 1
        argv = self._argv(command, args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                cwd="/",
            )
        except OSError as exc:
            raise LauncherUnavailable(f"cannot run {argv[0]}: {exc}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await proc.communicate(stdin)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise LauncherUnavailable(
                f"{command} did not finish within {self.timeout:g}s (slurmctld not answering?)"
            ) from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        stderr = err.decode(errors="replace").strip()
        if proc.returncode:
            message = f"{command} failed ({proc.returncode}): {stderr[-500:]}"
            if _UNREACHABLE.search(stderr):
                raise LauncherUnavailable(message)
            raise SlurmRefused(message)
        return out.decode(errors="replace")

    async def submit(self, script: str) -> str:
        """``sbatch --parsable`` of a script on stdin; the (array) job id."""
        out = await self.run("sbatch", "--parsable", stdin=script.encode())
        job_id = out.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise SlurmRefused(f"sbatch answered {out.strip()[:200]!r}, not a job id")
        return job_id

    async def jobs(self, job_name: str) -> list[JobRecord]:
        """Every array task named ``job_name`` (see ``SlurmLauncher.status_query``): one call.

        "fields": ``squeue --me --name=... --states=all --Format=...``, the user's jobs
        only (filtered by slurmctld), named fields separated by ``\x1f``. "json":
        ``squeue --json``, which in Slurm 22.05 lists every job of the cluster (it
        ignores filters), exits 0 even when slurmctld is down and says so in ``errors``.
        """
        if self.query == "fields":
            out = await self.run(
                "squeue",
                "--noheader",
                "--me",
                f"--name={job_name}",
                "--states=all",
                f"--Format={FORMAT}",
            )
            return field_records(out, job_name)
        out = await self.run("squeue", "--json", f"--name={job_name}")
        try:
            document = json.loads(out)
        except ValueError as exc:
            raise LauncherUnavailable(f"squeue --json gave no JSON: {out[:200]!r}") from exc
        errors = document.get("errors") or []
        if errors:
            words = "; ".join(
                f"{e.get('source', '')}: {e.get('description', '')}".strip(": ") for e in errors
            )
            raise LauncherUnavailable(f"squeue failed: {words}")
        return job_records(document, job_name)

    async def cancel(self, job_ids: Sequence[str]) -> None:
        """``scancel`` these jobs or array tasks in one call (ones already gone are fine)."""
        if job_ids:
            try:
                await self.run("scancel", *job_ids)
            except SlurmRefused as exc:
                # scancel exits 1 when some of the jobs had ended already; it still
                # cancelled the others. Anything else is worth an error.
                if "Invalid job id" not in str(exc) and "already completed" not in str(exc):
                    raise
