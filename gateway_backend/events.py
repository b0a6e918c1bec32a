"""Recent per-cluster events, so users can see why a worker is pending or failed."""

from __future__ import annotations

import time
from collections import defaultdict, deque


class EventLog:
    """A bounded in-memory log of events per cluster."""

    def __init__(self, per_cluster: int = 50) -> None:
        self._events: dict[str, deque] = defaultdict(lambda: deque(maxlen=per_cluster))

    def add(self, cluster_name: str, message: str, level: str = "info") -> None:
        self._events[cluster_name].append(
            {"time": round(time.time(), 3), "level": level, "message": message}
        )

    def get(self, cluster_name: str) -> list[dict]:
        return list(self._events.get(cluster_name, ()))

    def forget(self, cluster_name: str) -> None:
        self._events.pop(cluster_name, None)
