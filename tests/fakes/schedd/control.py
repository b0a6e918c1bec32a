"""``StandinControl``: the test and benchmark side of the stand-in (faults, counters, history).

Control calls are never affected by the injected faults, and they raise ``RuntimeError``
rather than ``HTCondorException`` when the daemon is gone, so a test cannot mistake a dead
stand-in for a simulated outage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import classad2

from .protocol import StandinUnreachable, parse_ad_texts, request


class StandinControl:
    """The test-side control channel: faults, counters, job history, slots, shutdown."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        workdir: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.workdir = Path(workdir) if workdir is not None else None
        self.timeout = timeout

    def _call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        try:
            return request(self.socket_path, "ctl." + op, args or {}, self.timeout)
        except StandinUnreachable as exc:
            raise RuntimeError(f"stand-in schedd at {self.socket_path}: {exc}") from exc

    def ping(self) -> dict[str, Any]:
        """Daemon pid, settings and queue size; raises RuntimeError when it does not answer."""
        return dict(self._call("ping"))

    def set_unavailable(self, seconds: float) -> None:
        """For ``seconds``, every schedd call fails with HTCondorException ("Failed to connect")."""
        self._call("fault", {"kind": "unavailable", "seconds": seconds})

    def set_hang(self, seconds: float, process_after: bool = False) -> None:
        """For ``seconds``, schedd calls get no answer (callers hit their timeout).

        With ``process_after`` the hung request is still carried out when the hang ends (a
        submit that "failed" on the client but queued jobs, as happens with a real schedd).
        """
        self._call("fault", {"kind": "hang", "seconds": seconds, "process_after": process_after})

    def set_call_latency(self, seconds: float) -> None:
        """Delay every schedd call by ``seconds`` (a slow schedd), until changed."""
        self._call("fault", {"kind": "latency", "seconds": seconds})

    def clear_faults(self) -> None:
        """End unavailability, hangs and added latency now."""
        self._call("fault", {"kind": "clear"})

    def counters(self) -> dict[str, Any]:
        """Calls served per method, procs per submit, calls refused/hung by faults."""
        return dict(self._call("counters"))

    def reset_counters(self) -> None:
        """Zero all counters."""
        self._call("reset_counters")

    def jobs(self, include_history: bool = True) -> list[classad2.ClassAd]:
        """Every job ad: those that left the queue (removed/completed) first, then the queue."""
        return parse_ad_texts(self._call("jobs", {"queue": True, "history": include_history}))

    def history(self) -> list[classad2.ClassAd]:
        """Ads of jobs that left the queue, oldest first (bounded by --history-size)."""
        return parse_ad_texts(self._call("jobs", {"queue": False, "history": True}))

    def set_slots(self, slots: int) -> None:
        """Change how many jobs may run at once (running jobs are never evicted)."""
        self._call("set", {"slots": slots})

    def set_start_latency(self, seconds: float) -> None:
        """Change how long a job must stay Idle before it may start."""
        self._call("set", {"start_latency": seconds})

    def set_tick(self, seconds: float) -> None:
        """Change how often periodic policy expressions are evaluated."""
        self._call("set", {"tick": seconds})

    def crash_before_logging_an_exit(self) -> None:
        """Make the daemon SIGKILL itself when a job's exit is known but not yet logged."""
        self._call("crash_before_logging_an_exit")

    def shutdown(self) -> None:
        """Ask the daemon to kill all jobs and exit."""
        self._call("shutdown")
