"""Which running workers leave first when a user scales down, and retiring them gracefully.

Pending workers always go first (dask-gateway's own rule). Among running
workers the admin's pool order decides — e.g. give burst capacity on the batch
pool back before interactive pods — newest first within a pool. The chosen
workers are retired by their scheduler (their data moves to the workers that
stay), over the same TLS the cluster's clients use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dask_gateway.client import GatewaySecurity
from dask_gateway_server.backends.db_base import JobStatus
from distributed.core import rpc

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, DataManager, Worker

    from .events import EventLog


def choose_running_to_retire(
    running: Sequence, pool_name: Callable[[object], str], order: Sequence[str], k: int
) -> list:
    """The ``k`` running workers to retire: by position of their pool in ``order``, newest first."""
    if k <= 0:
        return []
    rank = {name: i for i, name in enumerate(order)}
    ranked = sorted(running, key=lambda w: (rank.get(pool_name(w), len(rank)), -w.start_time))
    return ranked[:k]


# A live scheduler accepts within a second; a dead one refuses, and distributed retries a
# refused connection until its timeout (30 s by default), holding the user's scale request.
SCHEDULER_CONNECT_TIMEOUT = 10.0


async def retire_on_scheduler(cluster, names: list[str], seconds: float) -> None:
    """Ask the cluster's scheduler to retire these workers (moving their data) and close them.

    The connection gets ``SCHEDULER_CONNECT_TIMEOUT``; the retirement ``seconds``. (A
    scheduler that died unnoticed, e.g. on a crashed node, held the scale request 30 s.)
    """
    security = GatewaySecurity(cluster.tls_key.decode(), cluster.tls_cert.decode())
    args = security.get_connection_args("client")
    timeout = min(SCHEDULER_CONNECT_TIMEOUT, seconds)
    async with rpc(cluster.scheduler_address, timeout=timeout, connection_args=args) as scheduler:
        await asyncio.wait_for(
            scheduler.retire_workers(names=names, close_workers=True, remove=True), seconds
        )


class PoolOrderScaleDown:
    """A user's ``scale(count)`` retires running workers in the admin's pool order.

    Upstream lets the scheduler choose which workers leave. Here the chosen
    workers are retired first, before the scale message reaches the scheduler,
    so it finds nothing left to choose; until its heartbeats report the new
    count, a higher count must not make the gateway replace the retired ones.
    """

    def __init__(
        self, order: Sequence[str], retire_timeout: float, events: EventLog, log: logging.Logger
    ) -> None:
        self.order = list(order)
        self.retire_timeout = retire_timeout
        self.events = events
        self.log = log
        # Scale-downs in progress: cluster name -> (count, deadline on the loop's clock).
        self._targets: dict[str, tuple[int, float]] = {}

    async def scale_down(
        self,
        db: DataManager,
        cluster: Cluster,
        count: int,
        pool_names: Sequence[str],
        pool_of: Callable[[Worker], str],
    ) -> None:
        """Retire running workers beyond ``count``; ``pool_names`` are the cluster's, in order."""
        self._targets.pop(cluster.name, None)
        running = [w for w in cluster.active_workers() if w.status == JobStatus.RUNNING]
        # Pending workers go first (upstream's rule): only running ones beyond ``count`` leave.
        k = len(running) - count
        if k <= 0 or not cluster.scheduler_address:
            return
        order = self.order + [n for n in reversed(pool_names) if n not in self.order]
        chosen = choose_running_to_retire(running, pool_of, order, k)
        db.update_workers([(w, {"close_expected": True}) for w in chosen])
        deadline = asyncio.get_running_loop().time() + self.retire_timeout + 30
        self._targets[cluster.name] = (count, deadline)
        try:
            await retire_on_scheduler(cluster, [w.name for w in chosen], self.retire_timeout)
        except Exception as exc:
            self.log.warning(
                "Cluster %s: retiring %d workers by pool order failed (%s); the scheduler "
                "chooses instead",
                cluster.name,
                len(chosen),
                exc,
            )
            self._targets.pop(cluster.name, None)
        else:
            names = sorted({pool_of(w) for w in chosen})
            self.events.add(
                cluster.name, f"scale-down retired {len(chosen)} worker(s) from {', '.join(names)}"
            )

    def heartbeat_count(self, cluster_name: str, count: int) -> int:
        """The count to act on for a heartbeat reporting ``count`` requested workers."""
        target = self._targets.get(cluster_name)
        if target is None:
            return count
        wanted, deadline = target
        if count == wanted or asyncio.get_running_loop().time() > deadline:
            self._targets.pop(cluster_name, None)
            return count
        # The scheduler retired workers for a scale-down it has not been told of yet.
        return min(count, wanted)
