"""A matrix product on gateway GPU workers vs a CPU worker, through the real gateway.

Starts the embedded gateway with two profiles, ``cpu`` and ``gpu`` (``worker_gpus = 1``,
devices from ``nvidia-smi -L``), runs the same float32 matrix product as a Dask task with
``resources={"GPU": 1}`` (CuPy, else PyTorch) and on the CPU worker (NumPy), and prints
both rates and their ratio. Where there is no GPU or neither library, it says so and exits 0:
the test suite never needs a GPU.

    python benchmarks/gpu_matmul.py [--size 8192] [--reps 5]
"""

from __future__ import annotations

import argparse
import getpass
import sys
import tempfile
import time
from pathlib import Path

from dask_gateway import BasicAuth

from client_ext import ElasticGateway
from gateway_backend.embedded import GatewayProcess
from gateway_backend.launchers.local_gpus import discover_gpus

CONFIG = """
c.ElasticBackend.profiles = {"cpu": {"worker_cores": 2, "worker_memory": 8},
                             "gpu": {"worker_gpus": 1, "worker_cores": 2, "worker_memory": 8}}
c.ElasticBackend.max_worker_memory = 8
"""


def gpu_matmul(n: int, reps: int) -> tuple[str, float]:
    """Seconds per product on this worker's GPU, and the library used."""
    try:
        import cupy as xp

        def sync():
            xp.cuda.Device().synchronize()

        a = xp.random.random((n, n), dtype=xp.float32)
        library = "cupy"
    except ImportError:
        import torch

        def sync():
            torch.cuda.synchronize()

        a = torch.rand((n, n), dtype=torch.float32, device="cuda")
        library = "torch"
    (a @ a).sum()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    sync()
    return library, (time.perf_counter() - t0) / reps


def cpu_matmul(n: int, reps: int) -> float:
    import numpy as np

    a = np.random.random((n, n)).astype(np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    return (time.perf_counter() - t0) / reps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if not discover_gpus():
        print("no GPU here (nvidia-smi -L lists none): nothing to measure")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "config.py")
        config.write_text(CONFIG)
        gateway = GatewayProcess(Path(tmp, "state"), config_file=config).start()
        try:
            auth = BasicAuth(getpass.getuser(), gateway.client_credentials()["password"])
            with ElasticGateway(gateway.address, auth=auth) as gw:
                flop = 2 * args.size**3
                with gw.new_cluster(profile="gpu") as cluster:
                    cluster.scale(1)
                    client = cluster.get_client()
                    client.wait_for_workers(1, timeout=120)
                    future = client.submit(
                        gpu_matmul, args.size, args.reps, resources={"GPU": 1}, pure=False
                    )
                    library, gpu_s = future.result(timeout=600)
                with gw.new_cluster(profile="cpu") as cluster:
                    cluster.scale(1)
                    client = cluster.get_client()
                    client.wait_for_workers(1, timeout=120)
                    cpu_s = client.submit(cpu_matmul, args.size, 1, pure=False).result(600)
        finally:
            gateway.stop()
    print(f"{args.size}x{args.size} float32 matrix product on gateway workers")
    print(f"  GPU worker ({library}): {gpu_s * 1e3:9.1f} ms  {flop / gpu_s / 1e12:8.2f} TFLOP/s")
    print(f"  CPU worker (numpy):  {cpu_s * 1e3:9.1f} ms  {flop / cpu_s / 1e12:8.2f} TFLOP/s")
    print(f"  ratio CPU/GPU time: {cpu_s / gpu_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
