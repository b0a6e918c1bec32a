"""Cluster start and scale-up latency: ElasticBackend (local launcher) vs upstream.

Runs the Elastic Gateway (``elastic-gateway serve``) and upstream dask-gateway-server
with its ``UnsafeLocalBackend`` (configured to start ``dask scheduler``/``dask worker``,
as distributed 2026 requires) side by side, alternating, with the same periods, and
prints medians and the ratio elastic/upstream.

    python benchmarks/scale_latency.py [--reps 5] [--workers 8]
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dask_gateway import BasicAuth

from client_ext import ElasticCluster
from gateway_backend.embedded import GatewayProcess

COMMON = """
c.{backend}.cluster_heartbeat_period = 5
c.{backend}.worker_status_period = 5
c.{backend}.cluster_status_period = 5
"""

UPSTREAM = """
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.Proxy.address = "127.0.0.1:{port}"
c.LocalClusterConfig.scheduler_cmd = [{dask!r}, "scheduler"]
c.LocalClusterConfig.worker_cmd = [{dask!r}, "worker"]
"""


def measure(gateway: GatewayProcess, password: str, n: int) -> tuple[float, float]:
    auth = BasicAuth(getpass.getuser(), password)  # the embedded gateway's single user
    t0 = time.perf_counter()
    with ElasticCluster(address=gateway.address, auth=auth) as cluster:
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        cluster.scale(n)
        while len(cluster.scheduler_info.get("workers", {})) < n:
            if time.perf_counter() - t1 > 180:
                raise TimeoutError(f"{n} workers did not start in 180 s")
            time.sleep(0.02)
        scaled = time.perf_counter() - t1
    return started, scaled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="eg-bench-"))
    dask_exe = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"
    try:
        elastic_cfg = root / "elastic.py"
        elastic_cfg.write_text(COMMON.format(backend="ElasticBackend"))
        elastic = GatewayProcess(root / "elastic", config_file=elastic_cfg).start()
        password = elastic.client_credentials()["password"]

        upstream_dir = root / "upstream"
        upstream_dir.mkdir()
        upstream_cfg = upstream_dir / "config.py"
        upstream = GatewayProcess(
            upstream_dir,
            command=[sys.executable, "-m", "dask_gateway_server", "-f", str(upstream_cfg)],
        )
        upstream_cfg.write_text(
            UPSTREAM.format(password=password, port=upstream.port, dask=dask_exe)
            + COMMON.format(backend="UnsafeLocalBackend")
        )
        upstream.start()

        results: dict[str, dict[str, list[float]]] = {
            "elastic": {"start": [], "scale": []},
            "upstream": {"start": [], "scale": []},
        }
        # One warm-up each (page cache, imports), then alternate.
        measure(elastic, password, 1)
        measure(upstream, password, 1)
        for rep in range(args.reps):
            order = [("elastic", elastic), ("upstream", upstream)]
            if rep % 2:
                order.reverse()
            for name, gw in order:
                start, scale = measure(gw, password, args.workers)
                results[name]["start"].append(start)
                results[name]["scale"].append(scale)
                print(
                    f"rep {rep + 1} {name:<8} start {start:5.2f} s  scale 0->{args.workers} "
                    f"{scale:5.2f} s",
                    flush=True,
                )
        for gw in (elastic, upstream):
            gw.stop()

        print(f"\nMedians over {args.reps} alternating runs on {os.cpu_count()} cores:")
        print(f"{'':<22}{'elastic':>10}{'upstream':>10}{'ratio':>8}")
        for key, label in (("start", "cluster start"), ("scale", f"scale 0->{args.workers}")):
            e = statistics.median(results["elastic"][key])
            u = statistics.median(results["upstream"][key])
            print(f"{label:<22}{e:>9.2f}s{u:>9.2f}s{e / u:>8.2f}")
        return 0
    finally:
        for gw in locals().get("elastic"), locals().get("upstream"):
            if gw is not None:
                gw.kill()
                gw.kill_leftovers()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
