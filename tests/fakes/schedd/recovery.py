"""What a restarted schedd does with the queue its job queue log describes.

As HTCondor does after a crash: jobs keep their ClusterId.ProcId and the next ClusterId
follows the highest ever handed out; idle, held and completed jobs stay as they were. A job
that was running is reconnected when its starter (``jobstarter.py``) still runs, or ended
and kept the job's exit status for the schedd; the job lease (``JobLeaseDuration``,
40 minutes by default) bounds how long a starter waits for that, so a daemon down for longer
finds the job killed. A job that cannot be reconnected goes back to Idle (its next start
counts in ``NumJobStarts``), one being removed leaves the queue, one being held stays held.
A starter the log does not name (the daemon died between starting it and logging that) is
killed, as a startd ends a claim that no schedd reconnects to: no job runs twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time

from .classads import RUNNING, SUSPENDED, int_attr
from .joblog import LogState
from .queue import Job, JobQueue
from .starter import Run, killpg

log = logging.getLogger("htcondor_standin")

#: JobLeaseDuration when the ad has none (HTCondor's default, 40 minutes).
DEFAULT_JOB_LEASE = 2400


def recover(queue: JobQueue, state: LogState, last_alive: float | None) -> None:
    """Rebuild ``queue`` from the replayed log ``state`` and reconnect or requeue its runs."""
    now = time.time()
    down_for = now - last_alive if last_alive is not None else 0.0
    queue.next_cluster = state.next_cluster
    records, history = state.parsed(queue.cfg.history_size)
    queue.history.extend(history)
    for _key, record in sorted(records.items(), key=lambda kv: _job_id(kv[0])):
        job = Job(
            ad=record["ad"],
            idle_since=now,
            after_exit=record.get("after") or "complete",
            completed_at=record.get("completed_at"),
        )
        queue.jobs[job.key] = job
        if record.get("run"):
            _reconnect(queue, job, Run.from_record(record["run"]), down_for)
    _kill_unknown_starters(queue)
    _remove_leftovers(queue)
    if state.jobs:
        log.info(
            "recovered %d jobs from the job queue log (down for %.1fs); next cluster %d",
            len(state.jobs),
            down_for,
            queue.next_cluster,
        )


def _job_id(key: str) -> tuple[int, int]:
    cluster, _, proc = key.partition(".")
    return int(cluster), int(proc)


def _reconnect(queue: JobQueue, job: Job, run: Run, down_for: float) -> None:
    """Adopt the job's starter again, or treat the job as one whose execute node was lost."""
    lease = int_attr(job.ad, "JobLeaseDuration", DEFAULT_JOB_LEASE)
    alive = run.starter_alive()
    if alive and down_for > lease:
        run.signal(signal.SIGKILL)  # the execute side gave up when the lease ran out
        log.info("job %d.%d: lease of %ds expired while down; killed", *job.key, lease)
        alive = False
    elif not alive and run.exit_file.exists():
        alive = down_for <= lease  # the starter kept the exit status for us
    if alive:
        job.run = run
        job.ad["NumJobReconnects"] = int_attr(job.ad, "NumJobReconnects", 0) + 1
        if job.after_exit != "complete":  # it was being killed: finish that
            run.signal(signal.SIGTERM)
            job.kill_at = time.time() + queue.cfg.kill_grace
        log.info("job %d.%d reconnected to its starter (pid %d)", *job.key, run.pid)
        return
    run.exit_file.unlink(missing_ok=True)
    if not queue.cfg.keep_scratch:
        shutil.rmtree(run.scratch, ignore_errors=True)
    if job.after_exit == "complete" and job.status in (RUNNING, SUSPENDED):
        job.after_exit = "idle"  # not an exit of the job: the attempt was lost
    job.run = run
    log.info("job %d.%d could not be reconnected", *job.key)
    queue.process_exited(job, -signal.SIGKILL, None)


def _remove_leftovers(queue: JobQueue) -> None:
    """Exit files and scratch dirs of runs whose end was logged but not yet cleaned up."""
    runs = [j.run for j in queue.jobs.values() if j.run is not None]
    exit_files = {run.exit_file for run in runs}
    for path in (queue.cfg.workdir / "spool").glob("exit_*"):
        if path not in exit_files:
            path.unlink(missing_ok=True)
    scratch_dirs = {run.scratch for run in runs}
    if not queue.cfg.keep_scratch:
        for path in (queue.cfg.workdir / "execute").glob("dir_*"):
            if path not in scratch_dirs:
                shutil.rmtree(path, ignore_errors=True)


def _kill_unknown_starters(queue: JobQueue) -> None:
    """Kill job process groups under our execute dir that no reconnected run owns."""
    execute = queue.cfg.workdir / "execute"
    marker = f"_CONDOR_SCRATCH_DIR={execute}/".encode()
    known = {j.run.scratch for j in queue.jobs.values() if j.run is not None}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                variables = f.read().split(b"\0")
            scratch = next((v[len(marker) :] for v in variables if v.startswith(marker)), None)
            directory = execute / scratch.decode().split("/")[0] if scratch else None
            if directory is None or directory in known:
                continue
            killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
            log.warning("killed pid %s in %s: no queued job runs there", entry.name, directory)
            if not queue.cfg.keep_scratch:
                shutil.rmtree(directory, ignore_errors=True)
