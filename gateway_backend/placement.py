"""Which pool gets the next worker, and where a long-pending worker moves.

Independent of launcher internals: a policy sees pools, their caps and how many
workers each already runs, and answers with a count per pool.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from dask_gateway_server.backends.db_base import JobStatus

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Worker

    from .pools import WorkerPool


def ordered_spill(
    pools: Sequence[WorkerPool], in_use: Mapping[str, int], n: int
) -> list[tuple[WorkerPool, int]]:
    """Fill pools in order, each up to its cap; what fits nowhere is left out."""
    out = []
    seen = set()
    for pool in pools:
        if n <= 0:
            break
        if pool.name in seen:
            continue  # a pool listed twice has one cap, not two
        seen.add(pool.name)
        room = pool.room(in_use.get(pool.name, 0))
        k = n if room is None else min(n, room)
        if k > 0:
            out.append((pool, k))
            n -= k
    return out


def plan_bursts(
    workers: Sequence[Worker],
    pools: Sequence[WorkerPool],
    pool_of: Callable[[Worker], WorkerPool],
    usage: dict[str, int],
    now_ms: float,
) -> dict[str, list[Worker]]:
    """Workers of one cluster pending longer than their pool's ``burst_after``, by the later
    pool (of ``pools``, the cluster's, in order) with room for them; ``usage`` is updated."""
    moves: dict[str, list[Worker]] = defaultdict(list)
    for w in workers:
        pool = pool_of(w)
        if (
            w.status != JobStatus.SUBMITTED
            or w.target != JobStatus.RUNNING
            or not pool.burst_after
            or now_ms - w.start_time < pool.burst_after * 1000
            or pool not in pools
        ):
            continue
        plan = ordered_spill(pools[pools.index(pool) + 1 :], usage, 1)
        if not plan:
            continue  # nowhere to go: it stays pending where it is
        target = plan[0][0]
        usage[target.name] = usage.get(target.name, 0) + 1
        moves[target.name].append(w)
    return moves
