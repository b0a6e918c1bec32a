"""Coalesce many small requests into one call.

dask-gateway reconciles workers one at a time; a batch system or API server
should instead see one call for everything that happened in the same moment
(e.g. a scale-down that stops forty workers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items added within ``window`` seconds and hands them to ``handler`` at once."""

    def __init__(self, handler: Callable[[Sequence[T]], Awaitable[None]], window: float) -> None:
        self.handler = handler
        self.window = window
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._flush_task: asyncio.Task | None = None

    async def add(self, item: T) -> None:
        """Queue ``item``; returns (or raises) when its batch has been handled."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flush_task is None:
            self._flush_task = asyncio.ensure_future(self._flush_later())
        await future

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window)
        batch, self._pending = self._pending, []
        self._flush_task = None
        try:
            await self.handler([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
