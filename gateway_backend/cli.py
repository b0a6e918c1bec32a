"""The ``elastic-gateway`` command: ``serve`` the gateway, run the end-to-end ``demo``, or
list and stop your ``clusters``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from client_ext.auth import default_state_directory

from . import cli_clusters
from .embedded import (
    DEFAULT_PORT,
    StateDirectoryBusy,
    embedded_config,
    lock_state_directory,
    tighten_state_directory,
    write_client_file,
)


def _notebook_snippet(address: str, state_dir: Path) -> str:
    return f"""
Elastic Gateway is running at {address}  (state: {state_dir})

In a notebook on this machine, as this user:

    from client_ext import ElasticGateway
    gw = ElasticGateway("{address}")
    cluster = gw.new_cluster()
    cluster.scale(4)
    client = cluster.get_client()

Stop with Ctrl-C (running clusters are stopped first).
"""


def _claim_state_directory(state_dir: Path) -> int | None:
    """Lock and tighten the state directory: None once it is ours, else an exit code (said why).

    The lock's descriptor stays open, unreferenced, for the life of the process.
    """
    try:
        lock_state_directory(state_dir)  # before anything in it is read or written
        changes = tighten_state_directory(state_dir)
    except StateDirectoryBusy as busy:
        print(f"elastic-gateway: {busy}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"elastic-gateway: --state-dir {state_dir}: {err}", file=sys.stderr)
        return 2
    for change in changes:
        print(f"elastic-gateway: {change}", file=sys.stderr, flush=True)
    return None


def serve(args: argparse.Namespace) -> int:
    # Everything serve creates (database, logs, cluster files) is this user's only.
    os.umask(0o077)
    from dask_gateway_server.app import DaskGateway

    from .identity import add_identity_route, new_identity_key

    if args.config and not Path(args.config).is_file():
        print(f"elastic-gateway: --config {args.config}: no such file", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir).resolve()
    refused = _claim_state_directory(state_dir)
    if refused is not None:
        return refused
    identity_key = new_identity_key()
    config = embedded_config(state_dir, args.port)

    class EmbeddedGateway(DaskGateway):
        """dask-gateway-server with the embedded defaults under an optional config file."""

        name = "elastic-gateway"

        def load_config_file(self, *a, **kw):
            if args.config:
                super().load_config_file(str(Path(args.config).resolve()))

        async def setup(self):
            add_identity_route(self.app, identity_key)
            await super().setup()
            proxy = self.backend.proxy
            host, port = proxy.address.rsplit(":", 1)
            # Under c.Proxy.prefix (e.g. behind JupyterHub's /services/<name>/) every
            # route, the API included, is below the prefix.
            address = f"http://{host or '127.0.0.1'}:{port}{proxy.prefix}"
            write_client_file(state_dir, address, identity_key)
            print(_notebook_snippet(address, state_dir), flush=True)

    app = EmbeddedGateway(config=config)
    app.initialize(["--log-level", args.log_level])
    refused = _check_database(app.config, state_dir)
    if refused is not None:
        return refused
    app.start()
    return 0


def _check_database(config, state_dir: Path) -> int | None:
    """None if the configured SQLite file (if any) is fit to serve from, else exit code 3."""
    from .embedded import processes_in
    from .state_db import StateDatabaseError, check_state_database, sqlite_file

    path = sqlite_file(config.ElasticBackend.db_url)
    if path is None:
        return None
    # Processes the local launchers run from this state directory, which an empty
    # database would have the gateway stop as unknown.
    running = len(processes_in(state_dir / "clusters"))
    try:
        check_state_database(path, live_cluster_processes=running)
    except StateDatabaseError as err:
        print(f"elastic-gateway: {err}", file=sys.stderr, flush=True)
        return 3
    return None


def demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(n_workers=args.workers, keep_state=args.keep_state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="elastic-gateway",
        description="Elastic Dask clusters: serve the gateway, run the end-to-end demo, "
        "or list and stop your clusters.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway (embedded single-machine default)")
    p.add_argument(
        "--state-dir",
        default=str(default_state_directory()),
        help="where the database, secrets and cluster directories live (default: %(default)s)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("ELASTIC_GATEWAY_PORT", DEFAULT_PORT)),
        help="port of the gateway proxy on 127.0.0.1 (default: %(default)s)",
    )
    p.add_argument("--config", help="a dask-gateway config file applied over the defaults")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARN or ERROR")
    p.set_defaults(func=serve)

    d = sub.add_parser("demo", help="start a gateway, run an analysis on a cluster, clean up")
    d.add_argument("--workers", type=int, default=4, help="workers to scale to (default: 4)")
    d.add_argument("--keep-state", action="store_true", help="keep the demo's state directory")
    d.set_defaults(func=demo)

    cli_clusters.add_parser(sub)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
