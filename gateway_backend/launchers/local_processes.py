"""Liveness and signals of the local launcher's process groups.

Every scheduler and worker runs in a session (and process group) of its own, led
by the process the launcher recorded; these helpers let the launcher tell when a
group is really gone, so its resources can be counted free.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil


def process_alive(state: dict[str, Any]) -> bool:
    """True if the process recorded in ``state`` still runs (pid reuse is ruled out)."""
    pid = state.get("pid")
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - state.get("create_time", 0)) > 0.05:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_alive(pgid: int) -> bool:
    """True while a live member of process group ``pgid`` runs: a Nanny's forked worker may
    outlive its Nanny (the group's leader) by moments, holding the worker's resources."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # members of another account (run_as): look at them below
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid``, or only ``pid`` when the group is not ours."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
