"""Which running workers leave first when a user scales down, and retiring them gracefully.

Pending workers always go first (dask-gateway's own rule). Among running
workers the admin's pool order decides — e.g. give burst capacity on the batch
pool back before interactive pods — newest first within a pool. The chosen
workers are retired by their scheduler (their data moves to the workers that
stay), over the same TLS the cluster's clients use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from dask_gateway.client import GatewaySecurity


def choose_running_to_retire(
    running: Sequence, pool_name: Callable[[object], str], order: Sequence[str], k: int
) -> list:
    """The ``k`` running workers to retire: by position of their pool in ``order``, newest first."""
    if k <= 0:
        return []
    rank = {name: i for i, name in enumerate(order)}
    ranked = sorted(running, key=lambda w: (rank.get(pool_name(w), len(rank)), -w.start_time))
    return ranked[:k]


async def retire_on_scheduler(cluster, names: list[str], seconds: float) -> None:
    """Ask the cluster's scheduler to retire these workers (moving their data) and close them."""
    from distributed.core import rpc

    security = GatewaySecurity(cluster.tls_key.decode(), cluster.tls_cert.decode())
    args = security.get_connection_args("client")
    async with rpc(cluster.scheduler_address, connection_args=args) as scheduler:
        await asyncio.wait_for(
            scheduler.retire_workers(names=names, close_workers=True, remove=True), seconds
        )
