"""Batching: calls made within a window reach the handler as one."""

from __future__ import annotations

import asyncio

from gateway_backend.batching import Batcher


async def test_batcher_hands_items_added_together_to_one_call():
    calls = []

    async def handler(items):
        calls.append(list(items))

    batcher = Batcher(handler, window=0.01)
    await asyncio.gather(*(batcher.add(i) for i in range(5)))
    await batcher.add(99)
    assert calls == [[0, 1, 2, 3, 4], [99]]


async def test_batcher_reports_a_failed_call_to_every_item():
    async def handler(items):
        raise RuntimeError("schedd down")

    batcher = Batcher(handler, window=0.01)
    results = await asyncio.gather(batcher.add(1), batcher.add(2), return_exceptions=True)
    assert [str(r) for r in results] == ["schedd down", "schedd down"]
