"""Workers that leave the scheduler and come back: a Nanny restarting its worker.

``client.restart()``, a nanny plugin (``Environ``, ``PipInstall``) or a worker the
Nanny revives after a crash leaves the scheduler and registers again under the same
name seconds later. dask-gateway's scheduler reports it as closed at once, and
upstream's backend would then stop its job or pod, leaving the cluster with no
workers (coffea-casa #460). Unexpected closures are held back as still active for
``grace`` seconds, unless its launcher says its process, job or pod is gone
(``replacement.checked_closures``): then it is reported closed at once and replaced
(benchmarks/chaos.py found an HTCondor job that ended while the gateway restarted
staying a RUNNING record, counted against the VO's quota and blocking its replacement,
for the whole grace).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any


class RestartGrace:
    """Per cluster and worker name: since when the scheduler reports it closed."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._closed_since: dict[str, dict[str, float]] = {}  # cluster -> name -> since

    def hold(
        self,
        cluster: str,
        msg: Mapping[str, Any],
        expected: Iterable[str] = (),
        now: float | None = None,
    ) -> Mapping[str, Any]:
        """The heartbeat with unexpected closures younger than ``grace`` counted active.

        ``expected``: workers asked to leave (scaled down, retired), never held.
        """
        now = time.monotonic() if now is None else now
        closed = set(msg["closed_workers"])
        expected = {*expected, *msg["closing_workers"]}
        # Names back (or stopped) start afresh at their next closure.
        since = {n: t for n, t in self._closed_since.get(cluster, {}).items() if n in closed}
        held = set()
        for name in closed - expected:
            if now - since.setdefault(name, now) < self.grace:
                held.add(name)
        if since:
            self._closed_since[cluster] = since
        else:
            self._closed_since.pop(cluster, None)
        if not held:
            return msg
        return {
            **msg,
            "active_workers": [*msg["active_workers"], *sorted(held)],
            "closed_workers": [n for n in msg["closed_workers"] if n not in held],
        }

    def forget(self, cluster: str) -> None:
        self._closed_since.pop(cluster, None)
