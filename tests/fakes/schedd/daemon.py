"""The stand-in schedd: a daemon process that queues jobs and runs them as local processes.

It is a separate process so that it outlives whatever submitted to it, exactly like a real
``condor_schedd`` outlives the gateway (a killed gateway's jobs must still be cleaned up by
their lease). This module wires the parts together and drives them from one event loop: the
wire server (``protocol.py``), the queue (``queue.py``), the negotiator (``negotiator.py``)
and the starter (``starter.py``).

Run: ``python -m tests.fakes.schedd.daemon --socket PATH --workdir DIR --slots N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .config import Config
from .joblog import JobLog
from .negotiator import Negotiator
from .protocol import MAX_REQUEST_BYTES, Handler, Server
from .queue import JobQueue
from .recovery import recover
from .starter import Starter

log = logging.getLogger("htcondor_standin")


class Schedd:
    """The queue, negotiator, starter and wire server of one daemon, and its scheduler loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop = asyncio.Event()
        self.joblog = JobLog(cfg.workdir / "spool" / "job_queue.log")
        self.settings_file = cfg.workdir / "spool" / "settings.json"
        self.queue = JobQueue(cfg, self.joblog)
        self.starter = Starter(cfg)
        self.negotiator = Negotiator(cfg, self.queue, self.starter)
        self.server = Server(
            {
                "submit": self._committed(self.queue.op_submit),
                "query": self.queue.op_query,
                "act": self._committed(self.queue.op_act),
                "edit": self._committed(self.queue.op_edit),
                "ctl.ping": self.ctl_ping,
                "ctl.jobs": self.ctl_jobs,
                "ctl.set": self.ctl_set,
                "ctl.shutdown": lambda a: self.stop.set(),
                "ctl.crash_before_logging_an_exit": self.ctl_crash_before_logging_an_exit,
            }
        )
        self.last_periodic = 0.0
        self.crash_before_logging_an_exit = False

    def _committed(self, handler: Handler) -> Handler:
        """``handler``, with its queue changes on disk before the answer goes out."""

        def run(args: dict[str, Any]) -> Any:
            try:
                return handler(args)
            finally:
                self.queue.commit()

        return run

    def recover(self) -> None:
        """Replay the job queue log, reconnect or requeue the runs, compact the log."""
        with contextlib.suppress(FileNotFoundError):
            self._set(json.loads(self.settings_file.read_text()))
        state, last_alive = self.joblog.replay()
        recover(self.queue, state, last_alive)
        self.queue.compact()

    # --- control channel ---------------------------------------------------------------------

    def ctl_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        """Liveness and current settings."""
        jobs = self.queue.jobs
        return {
            "pid": os.getpid(),
            "name": self.cfg.name,
            "slots": self.cfg.slots,
            "start_latency": self.cfg.start_latency,
            "tick": self.cfg.tick,
            "jobs": len(jobs),
            "running": sum(1 for j in jobs.values() if j.run is not None),
            "workdir": str(self.cfg.workdir),
            "time": time.time(),
        }

    def ctl_jobs(self, args: dict[str, Any]) -> list[str]:
        """Queue ads plus (optionally) the history of jobs that left the queue."""
        return self.queue.snapshot(args.get("queue", True), args.get("history", True))

    def ctl_crash_before_logging_an_exit(self, args: dict[str, Any]) -> None:
        """Arm a SIGKILL of this daemon between a job's exit and the log's record of it."""
        self.crash_before_logging_an_exit = True

    def ctl_set(self, args: dict[str, Any]) -> None:
        """Change slots / start latency / tick at runtime.

        They are the execute pool's settings, which a schedd crash does not change: kept in
        the spool for a restarted daemon.
        """
        self._set(args)
        settings = {k: getattr(self.cfg, k) for k in ("slots", "start_latency", "tick")}
        partial = self.settings_file.with_name(self.settings_file.name + ".new")
        partial.write_text(json.dumps(settings))
        os.replace(partial, self.settings_file)

    def _set(self, args: dict[str, Any]) -> None:
        if "slots" in args:
            self.cfg.slots = max(0, int(args["slots"]))
        if "start_latency" in args:
            self.cfg.start_latency = max(0.0, float(args["start_latency"]))
        if "tick" in args:
            self.cfg.tick = max(0.01, float(args["tick"]))

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
        """One scheduler pass; its queue changes are one transaction, logged at the end."""
        ended = []
        for job in list(self.queue.jobs.values()):
            run = job.run
            returncode = run.poll() if run is not None else None
            if run is not None and returncode is not None:
                failure = self.starter.exec_failure(run, job.ad)
                outputs = job.after_exit == "complete" and failure is None
                transfer_error = self.starter.finish(run, job.ad, transfer_outputs=outputs)
                self.queue.process_exited(job, returncode, transfer_error, failure)
                ended.append(run)
            elif run is not None and job.kill_at is not None and now >= job.kill_at:
                run.signal(signal.SIGKILL)
                job.kill_at = None
        if ended and self.crash_before_logging_an_exit:
            log.warning("crashing before the exit of %d job(s) is logged, as asked", len(ended))
            os.kill(os.getpid(), signal.SIGKILL)
        if now - self.last_periodic >= self.cfg.tick:
            self.last_periodic = now
            self.queue.periodic()
            self.joblog.heartbeat()
        self.queue.drop_completed(now)
        self.negotiator.negotiate(now)
        self.queue.commit()
        for run in ended:
            self.starter.clean_up(run)
        if self.cfg.exit_with_pid is not None:
            try:
                os.kill(self.cfg.exit_with_pid, 0)
            except ProcessLookupError:
                log.warning("process %d is gone; shutting down", self.cfg.exit_with_pid)
                self.stop.set()
            except PermissionError:
                pass

    async def shutdown_jobs(self) -> None:
        """Kill every running job's process group (TERM, then KILL), bounded in time.

        As a schedd shutting down gracefully, the killed jobs go back to Idle in the log
        (those being removed leave the queue), for the next start to run again.
        """
        running = [j for j in self.queue.jobs.values() if j.run is not None]
        await self.starter.kill_all([j.run for j in running if j.run is not None])
        for job in running:
            if job.after_exit == "complete":
                job.after_exit = "idle"
            self.queue.process_exited(job, -signal.SIGKILL, None)
        self.queue.commit()
        self.joblog.close()


async def serve(cfg: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT, a ``shutdown`` request or ``exit_with_pid`` dies."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    schedd = Schedd(cfg)
    schedd.recover()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, schedd.stop.set)
    with contextlib.suppress(FileNotFoundError):
        cfg.socket.unlink()
    server = await asyncio.start_unix_server(
        schedd.server.handle, path=str(cfg.socket), limit=MAX_REQUEST_BYTES
    )
    scheduler = asyncio.create_task(schedd.run_scheduler())
    log.info("stand-in schedd %s listening on %s (pid %d)", cfg.name, cfg.socket, os.getpid())
    try:
        await schedd.stop.wait()
    finally:
        server.close()
        schedd.stop.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(scheduler, timeout=2)
        await schedd.shutdown_jobs()
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
    """Entry point for ``python -m tests.fakes.schedd.daemon``."""
    return asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
