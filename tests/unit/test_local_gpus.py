"""GPU devices of the local launcher: each worker its own, all or nothing per batch."""

from __future__ import annotations

import pytest

from gateway_backend.launchers.base import LauncherUnavailable
from gateway_backend.launchers.local_gpus import GPU_LINE, GpuAllocator, NotEnoughGPUs


def test_each_worker_gets_devices_no_other_worker_holds():
    gpus = GpuAllocator(["0", "1", "2", "3"])
    assert gpus.take(["a", "b"], 1) == {"a": ["0"], "b": ["1"]}
    assert gpus.take(["c"], 2) == {"c": ["2", "3"]}
    assert gpus.free() == []


def test_released_devices_serve_the_next_worker():
    gpus = GpuAllocator(["0", "1"])
    gpus.take(["a", "b"], 1)
    gpus.release(["a"])
    assert gpus.take(["c"], 1) == {"c": ["0"]}


def test_a_batch_that_does_not_fit_takes_nothing_and_is_retried_not_failed():
    gpus = GpuAllocator(["0", "1", "2"])
    with pytest.raises(NotEnoughGPUs, match="2 worker\\(s\\) with 2 GPU\\(s\\) each need 4"):
        gpus.take(["a", "b"], 2)
    assert gpus.free() == ["0", "1", "2"]
    assert issubclass(NotEnoughGPUs, LauncherUnavailable)


def test_adopted_workers_keep_the_devices_their_state_records():
    gpus = GpuAllocator(["0", "1"])
    gpus.remember("adopted", {"pid": 1, "gpus": ["1"]})
    assert gpus.take(["new"], 1) == {"new": ["0"]}


def test_nvidia_smi_lines_name_the_devices():
    line = "GPU 3: NVIDIA H200 (UUID: GPU-5c1e2f2a-9d1b-4c55-8f77-2d7d1a8f0e11)"
    assert GPU_LINE.match(line).group(1) == "3"
    assert GPU_LINE.match("  MIG 1g.18gb     Device  0: (UUID: MIG-abc)") is None
