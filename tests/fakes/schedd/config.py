"""The daemon's settings, shared by the queue, negotiator and starter (the control channel
changes some of them at run time, so they hold this object rather than copies)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
