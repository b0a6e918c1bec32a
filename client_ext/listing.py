"""Your clusters at a glance: age, workers, cores, last client activity; which to stop.

``ElasticGateway.list_clusters`` returns ``ElasticClusterReport``s (upstream's
``ClusterReport`` plus these fields) and ``stop_clusters`` picks the clusters
to stop with ``select``; the ``elastic-gateway clusters`` command prints
``table``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from dask_gateway.client import ClusterReport


def duration_text(seconds: float) -> str:
    """``90`` -> ``"1.5 min"``: ages and silences in the analyst's words."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.0f} s"


class ElasticClusterReport(ClusterReport):
    """A ``ClusterReport`` with what tells a forgotten cluster from a working one.

    ``profile``; ``age`` (seconds); ``workers`` (``{"running", "pending",
    "requested"}``); ``cores`` and ``memory_gib`` the workers hold;
    ``clients_connected`` (None: not reported yet); ``last_client_activity``
    (seconds since the epoch: now while a client is connected, else when the
    last one left; None: no client ever connected); ``detached`` (created with
    ``shutdown_on_close=False``). None for clusters that no longer run.
    """

    __slots__ = (
        "age",
        "clients_connected",
        "cores",
        "detached",
        "last_client_activity",
        "memory_gib",
        "profile",
        "workers",
    )

    @classmethod
    def of(cls, report: ClusterReport, summary: Mapping[str, Any] | None) -> ElasticClusterReport:
        out = cls(
            report.name,
            report.options,
            report.status,
            report.scheduler_address,
            report.dashboard_link,
            report.start_time,
            report.stop_time,
            report.tls_cert,
            report.tls_key,
        )
        summary = summary or {}
        out.profile = summary.get("profile")
        out.age = summary.get("age_seconds")
        out.workers = summary.get("workers")
        out.cores = summary.get("cores")
        out.memory_gib = summary.get("memory_gib")
        out.clients_connected = summary.get("clients_connected")
        out.last_client_activity = summary.get("last_client_activity")
        out.detached = summary.get("detached")
        return out

    def client_text(self, now: float | None = None) -> str:
        """``"2 connected"``, ``"none for 3 h"`` or ``"never connected"``."""
        if self.clients_connected:
            return f"{self.clients_connected} connected"
        if self.last_client_activity is None:
            return "never connected"
        now = time.time() if now is None else now
        return f"none for {duration_text(max(0.0, now - self.last_client_activity))}"

    def __repr__(self) -> str:
        if self.age is None:
            return f"ElasticClusterReport<name={self.name}, status={self.status.name}>"
        running = (self.workers or {}).get("running", 0)
        return (
            f"ElasticClusterReport<name={self.name}, status={self.status.name}, "
            f"age={duration_text(self.age)}, workers={running}, cores={self.cores}, "
            f"clients={self.client_text()}>"
        )


def select(
    summaries: Iterable[Mapping[str, Any]],
    *,
    profile: str | None = None,
    older_than: float | None = None,
    no_client_for: float | None = None,
    now: float | None = None,
) -> list[str]:
    """Names of the clusters matching every filter given (none given: all of them).

    ``no_client_for``: no client connected for at least that many seconds, or
    never one while the cluster is at least that old.
    """
    now = time.time() if now is None else now
    chosen = []
    for s in summaries:
        if profile is not None and s.get("profile") != profile:
            continue
        if older_than is not None and s["age_seconds"] < older_than:
            continue
        if no_client_for is not None:
            if s.get("clients_connected"):
                continue
            last = s.get("last_client_activity")
            silent = s["age_seconds"] if last is None else now - last
            if silent < no_client_for:
                continue
        chosen.append(s["name"])
    return chosen


def table(reports: Iterable[ElasticClusterReport], now: float | None = None) -> str:
    """The reports as aligned text columns, one cluster a line."""
    header = ("NAME", "STATUS", "PROFILE", "AGE", "WORKERS", "CORES", "CLIENTS")
    rows = [header]
    for r in reports:
        workers = r.workers or {}
        rows.append(
            (
                r.name,
                r.status.name,
                r.profile or "-",
                "-" if r.age is None else duration_text(r.age),
                f"{workers.get('running', 0)}+{workers.get('pending', 0)} pending",
                str(r.cores if r.cores is not None else "-"),
                r.client_text(now) if r.age is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
