"""Which pool gets the next worker.

Independent of launcher internals: a policy sees pools, their caps and how many
workers each already runs, and answers with a count per pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
