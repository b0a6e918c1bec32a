"""Closing an upstream ``Gateway`` client so that closing it again is harmless."""

from __future__ import annotations

from collections.abc import Callable

from dask_gateway import Gateway


def close_once(gateway: Gateway, close: Callable[[], object]) -> None:
    """Run ``close`` unless already done, then drop the stopped loop runner.

    Upstream's ``Gateway.__del__`` closes again and raises once the loop runner
    has stopped; without ``_loop_runner`` it skips that.
    """
    if getattr(gateway, "_loop_runner", None) is None:
        return
    close()
    del gateway._loop_runner
