"""GPU devices of the local launcher, one worker per device at a time.

A worker of a cluster with ``worker_gpus = n`` gets ``n`` free devices as its
``CUDA_VISIBLE_DEVICES``, recorded in its state, so a restarted gateway knows
which devices its adopted workers hold.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .base import LauncherUnavailable

# `nvidia-smi -L`: "GPU 0: NVIDIA H200 (UUID: GPU-...)", MIG slices indented below.
GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[0-9a-fA-F-]+)\)")


def discover_gpus() -> list[str]:
    """Device indices ``nvidia-smi -L`` lists (none without the NVIDIA driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [m.group(1) for line in out.splitlines() if (m := GPU_LINE.match(line))]


class NotEnoughGPUs(LauncherUnavailable):
    """The pool has fewer free devices than a batch of workers needs now: the backend
    retries later without counting it as the workers' failure."""


class GpuAllocator:
    """Which worker holds which device of the pool's ``gpu_devices``."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = list(dict.fromkeys(devices))
        self.held: dict[str, list[str]] = {}  # worker name -> devices

    def free(self) -> list[str]:
        taken = {d for ds in self.held.values() for d in ds}
        return [d for d in self.devices if d not in taken]

    def take(self, workers: Sequence[str], per_worker: int) -> dict[str, list[str]]:
        """``per_worker`` devices for each of ``workers``, all or none."""
        if per_worker > len(self.devices):
            # Never satisfiable: a failure (counted, so the cluster ends with this reason).
            raise RuntimeError(
                f"workers with {per_worker} GPU(s) cannot run here: LocalLauncher.gpu_devices "
                f"has {len(self.devices)}; choose a profile with fewer GPUs per worker"
            )
        free = self.free()
        needed = per_worker * len(workers)
        if needed > len(free):
            raise NotEnoughGPUs(
                f"{len(workers)} worker(s) with {per_worker} GPU(s) each need {needed} free "
                f"device(s), {len(free)} of the {len(self.devices)} devices of "
                "LocalLauncher.gpu_devices are free"
            )
        given = {w: free[i * per_worker : (i + 1) * per_worker] for i, w in enumerate(workers)}
        self.held.update(given)
        return given

    def release(self, workers: Iterable[str]) -> None:
        for w in workers:
            self.held.pop(w, None)

    def remember(self, worker: str, state: Mapping[str, Any]) -> None:
        """A live worker's devices, from its recorded state (after a restart)."""
        if state.get("gpus"):
            self.held[worker] = list(state["gpus"])
