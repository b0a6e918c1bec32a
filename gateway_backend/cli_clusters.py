"""``elastic-gateway clusters``: list your clusters, or stop the ones you forgot.

Client side only (``client_ext``): it runs wherever a notebook would, and finds
the gateway and your credentials as ``ElasticGateway()`` does.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``clusters`` subcommand and its ``list``/``stop`` actions."""
    p = sub.add_parser("clusters", help="list your clusters, or stop them")
    p.add_argument(
        "--address", help="the gateway (default: as ElasticGateway() finds it)", default=None
    )
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser(
        "list", help="your running clusters: age, workers, cores, last client activity"
    )
    stop = actions.add_parser(
        "stop", help="stop every running cluster of yours that matches all filters given"
    )
    stop.add_argument("--profile", help="only clusters of this profile")
    stop.add_argument(
        "--older-than", type=float, metavar="SECONDS", help="only clusters at least this old"
    )
    stop.add_argument(
        "--no-client-for",
        type=float,
        metavar="SECONDS",
        help="only clusters without a client connected for at least this long",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from client_ext import ElasticGateway
    from client_ext.listing import table

    gateway = ElasticGateway(args.address)
    try:
        if gateway.address is None:
            print(
                "elastic-gateway clusters: no gateway found: pass --address or set "
                "ELASTIC_GATEWAY_ADDRESS",
                file=sys.stderr,
            )
            return 2
        if args.action == "list":
            print(table(gateway.list_clusters()))
            return 0
        stopped = gateway.stop_clusters(
            profile=args.profile, older_than=args.older_than, no_client_for=args.no_client_for
        )
        for name in stopped:
            print(f"stopped {name}")
        if not stopped:
            print("no cluster of yours matched")
        return 0
    finally:
        gateway.close()
