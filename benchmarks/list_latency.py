"""``list_clusters`` latency with 10 to 100 live clusters: ElasticBackend vs upstream.

Runs the Elastic Gateway (``elastic-gateway serve``, local launcher) and upstream
dask-gateway-server with its ``UnsafeLocalBackend`` side by side, each seeded at
start-up with N running cluster *records* spread over many users (records created
directly through the backend's own ``process_cluster_options`` and database, no
scheduler processes: 2 x 100 real schedulers do not fit 2 cores; see
``api_under_load.py`` for the Elastic Gateway with real ones). A client then
lists clusters through each gateway's proxy, alternating in blocks, over one
keep-alive connection per gateway, as a user owning 2 of the N clusters (the
answer has the same size whatever N: cost should be flat) and as one owning all
of them (the answer grows with N for both). Prints p50/p99 and elastic/upstream.

    python benchmarks/list_latency.py [--sizes 10,50,100] [--requests 1500]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway_backend.embedded import GatewayProcess

HERE = Path(__file__).resolve().parent
OWN = 2  # clusters of the user whose list stays the same size

COMMON = """
import sys
sys.path.insert(0, {here!r})
from list_latency import seeded
c.DaskGateway.backend_class = seeded({backend!r})
c.{name}.cluster_heartbeat_period = 5
c.{name}.cluster_heartbeat_timeout = 36000
c.{name}.cluster_status_period = 3600
c.{name}.worker_status_period = 3600
c.{name}.stop_clusters_on_shutdown = False
"""

UPSTREAM = """
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.Proxy.address = "127.0.0.1:{port}"
c.UnsafeLocalBackend.db_url = "sqlite:///{db}"
c.UnsafeLocalBackend.db_encrypt_keys = [{key!r}]
"""


def seeded(backend_path: str) -> type:
    """``backend_path``'s class, seeding ``EG_BENCH_SEED`` running cluster records at set-up.

    The first ``OWN`` belong to user ``few``, half of the others to ``many``, the
    rest to ten more users.
    """
    import importlib

    from dask_gateway_server.backends.db_base import JobStatus
    from dask_gateway_server.models import User

    module, _, name = backend_path.rpartition(".")
    base = getattr(importlib.import_module(module), name)

    class Seeded(base):  # type: ignore[misc, valid-type]
        async def setup(self, app) -> None:
            await super().setup(app)
            n = int(os.environ["EG_BENCH_SEED"])
            for i in range(n):
                owner = "few" if i < OWN else ("many" if i % 2 else f"user{i % 20}")
                user = User(owner, groups=[], admin=False)
                options, config = await self.process_cluster_options(user, {})
                cluster = self.db.create_cluster(owner, options, config.to_dict())
                self.db.update_cluster(
                    cluster,
                    status=JobStatus.RUNNING,
                    scheduler_address="tls://127.0.0.1:1",
                    dashboard_address="http://127.0.0.1:2",
                    api_address="http://127.0.0.1:3",
                )

    Seeded.__name__ = f"Seeded{name}"
    return Seeded


class Lister:
    """GET /api/v1/clusters/ over one keep-alive connection, timed per request."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def once(self) -> tuple[float, int]:
        t0 = time.perf_counter()
        self.conn.request("GET", "/api/v1/clusters/", headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - t0
        if response.status != 200:
            raise RuntimeError(f"list_clusters answered {response.status}: {body[:200]!r}")
        return elapsed, body.count(b'"name"')


def start_pair(root: Path, n: int) -> tuple[GatewayProcess, GatewayProcess, str]:
    env = {"EG_BENCH_SEED": str(n)}
    elastic_cfg = root / f"elastic{n}.py"
    elastic_cfg.write_text(
        COMMON.format(
            here=str(HERE), backend="gateway_backend.ElasticBackend", name="ElasticBackend"
        )
        # Many users, one OS account (benchmark users only; see LocalLauncher.run_as).
        + 'c.LocalLauncher.single_user = ""\nc.LocalLauncher.allow_shared_local_user = True\n'
    )
    elastic = GatewayProcess(root / f"elastic{n}", config_file=elastic_cfg, extra_env=env)
    elastic.start()
    password = elastic.client_credentials()["password"]
    upstream_dir = root / f"upstream{n}"
    upstream_dir.mkdir()
    upstream_cfg = upstream_dir / "config.py"
    upstream = GatewayProcess(
        upstream_dir,
        command=[sys.executable, "-m", "dask_gateway_server", "-f", str(upstream_cfg)],
        extra_env=env,
    )
    key = base64.b64encode(os.urandom(32)).decode()
    upstream_cfg.write_text(
        COMMON.format(
            here=str(HERE),
            backend="dask_gateway_server.backends.local.UnsafeLocalBackend",
            name="UnsafeLocalBackend",
        )
        + UPSTREAM.format(
            password=password, port=upstream.port, db=upstream_dir / "db.sqlite", key=key
        )
    )
    upstream.start()
    return elastic, upstream, password


def measure(gateways: dict[str, GatewayProcess], password: str, user: str, requests: int):
    listers = {name: Lister(gw.port, user, password) for name, gw in gateways.items()}
    times: dict[str, list[float]] = {name: [] for name in gateways}
    sizes = {}
    for lister in listers.values():
        for _ in range(20):  # warm: connections, caches
            lister.once()
    block = 25
    for b in range(requests // block):
        order = list(listers.items()) if b % 2 == 0 else list(reversed(listers.items()))
        for name, lister in order:
            for _ in range(block):
                elapsed, count = lister.once()
                times[name].append(elapsed)
                sizes[name] = count
    return times, sizes


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="eg-list-bench-"))
    rows = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            elastic, upstream, password = start_pair(root, n)
            try:
                gateways = {"elastic": elastic, "upstream": upstream}
                for who in ("few", "many"):
                    times, sizes = measure(gateways, password, who, args.requests)
                    rows.append((n, who, sizes["elastic"], times))
                    e, u = times["elastic"], times["upstream"]
                    print(
                        f"N={n:<4} user owning {sizes['elastic']:>3}: p50 elastic "
                        f"{pct(e, 50) * 1e3:.2f} ms upstream {pct(u, 50) * 1e3:.2f} ms, p99 "
                        f"elastic {pct(e, 99) * 1e3:.2f} ms upstream {pct(u, 99) * 1e3:.2f} ms",
                        flush=True,
                    )
            finally:
                for gw in (elastic, upstream):
                    gw.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"\nlist_clusters through the proxy, {args.requests} requests per gateway and case, "
        f"alternating blocks of 25, on {os.cpu_count()} cores (records created directly):"
    )
    print(
        f"{'live':>5} {'listed':>7}{'p50 elastic':>13}{'upstream':>10}{'ratio':>7}"
        f"{'p99 elastic':>13}{'upstream':>10}{'ratio':>7}"
    )
    for n, _who, size, times in rows:
        e, u = times["elastic"], times["upstream"]
        e50, u50, e99, u99 = pct(e, 50), pct(u, 50), pct(e, 99), pct(u, 99)
        print(
            f"{n:>5} {size:>7}{e50 * 1e3:>10.2f} ms{u50 * 1e3:>7.2f} ms{e50 / u50:>7.2f}"
            f"{e99 * 1e3:>10.2f} ms{u99 * 1e3:>7.2f} ms{e99 / u99:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
