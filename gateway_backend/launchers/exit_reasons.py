"""How a process, job or pod ended, in the words an analyst reads in ``details()``.

Every launcher maps what it learns (an exit status, a pod's ``OOMKilled``, an
HTCondor ``HoldReason``) onto these phrases, so the same cause reads the same
wherever the worker ran, with the log's last lines attached where there is a log.
"""

from __future__ import annotations

import signal

LAST_LINES = 3
MEMORY_KILLED = "killed for exceeding its memory limit"
MEMORY_ADVICE = "ask for more worker_memory, or make tasks use less (smaller partitions)"


def signal_text(signum: int) -> str:
    """``"signal 9 (SIGKILL)"``, with what a SIGKILL usually means for a Dask worker."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = "unknown"
    text = f"signal {signum} ({name})"
    if signum == signal.SIGKILL:
        text += (
            ": usually the system's out-of-memory killer or a memory limit, or someone ran kill -9"
        )
    return text


def exit_text(code: int | None = None, signum: int | None = None) -> str:
    """``"was killed by signal 9 (SIGKILL): ..."``, ``"exited with code 3"`` or ``"exited"``.

    A negative ``code`` is a signal (``subprocess``'s convention).
    """
    if signum is None and code is not None and code < 0:
        signum = -code
    if signum is not None:
        return f"was killed by {signal_text(signum)}"
    return "exited" if code is None else f"exited with code {code}"


def last_lines(log: str, lines: int = LAST_LINES) -> str:
    """The last non-empty lines of a log, joined with `` | `` for one-line reasons."""
    kept = [line.strip() for line in log.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def with_log(reason: str, log: str) -> str:
    """``reason`` with the log's last lines after it (or "no output")."""
    tail = last_lines(log)
    return f"{reason}; last log lines: {tail}" if tail else f"{reason}; no output"
