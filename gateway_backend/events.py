"""Recent per-cluster events, so users can see why a worker is pending or failed."""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict, deque


class EventLog:
    """A bounded in-memory log of events per cluster.

    Events of a stopped cluster stay readable for ``keep_stopped_for`` seconds
    (the analyst asks "why did it stop?" after the fact), and for at most
    ``max_stopped`` stopped clusters, so memory does not grow with the number of
    clusters a long-running gateway has seen.
    """

    def __init__(
        self, per_cluster: int = 50, keep_stopped_for: float = 86400.0, max_stopped: int = 1000
    ) -> None:
        self._events: dict[str, deque] = defaultdict(lambda: deque(maxlen=per_cluster))
        self.keep_stopped_for = keep_stopped_for
        self.max_stopped = max_stopped
        # Stopped clusters -> when they stopped, oldest first.
        self._stopped: OrderedDict[str, float] = OrderedDict()

    def add(self, cluster_name: str, message: str, level: str = "info") -> None:
        self._events[cluster_name].append(
            {"time": round(time.time(), 3), "level": level, "message": message}
        )

    def get(self, cluster_name: str) -> list[dict]:
        return list(self._events.get(cluster_name, ()))

    def stopped(self, cluster_name: str, now: float | None = None) -> None:
        """The cluster stopped: keep its events for a while, then forget them."""
        now = time.time() if now is None else now
        self._stopped[cluster_name] = now
        self._stopped.move_to_end(cluster_name)
        self.expire(now)

    def expire(self, now: float | None = None) -> None:
        """Forget events of clusters stopped too long ago, or beyond ``max_stopped``."""
        now = time.time() if now is None else now
        while self._stopped:
            name, when = next(iter(self._stopped.items()))
            if len(self._stopped) <= self.max_stopped and now - when < self.keep_stopped_for:
                break
            del self._stopped[name]
            self._events.pop(name, None)

    def forget(self, cluster_name: str) -> None:
        self._events.pop(cluster_name, None)
        self._stopped.pop(cluster_name, None)

    def __len__(self) -> int:
        """Clusters with events held."""
        return len(self._events)
