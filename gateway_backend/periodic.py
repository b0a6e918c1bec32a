"""Background loops of the backend and the launchers, all of one shape.

Each runs one step every period on upstream's ``TaskPool`` (closing the pool
cancels them), logs a failed step and goes on: a schedd or API server that
is down for a while must not end the loop that notices it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from dask_gateway_server.utils import TaskPool


def run_periodically(
    tasks: TaskPool,
    step: Callable[[], Awaitable[object]],
    period: float | Callable[[], float],
    log: logging.Logger,
    what: str,
) -> asyncio.Future:
    """Run ``step`` every ``period`` seconds (a number, or a function read before each sleep).

    ``what`` names the step in the warning a failed step logs ("HTCondor status
    query", say). The first step runs after the first period.
    """

    async def loop() -> None:
        while True:
            await asyncio.sleep(period() if callable(period) else period)
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("%s failed; trying again in the next period", what, exc_info=True)

    return tasks.spawn(loop())
