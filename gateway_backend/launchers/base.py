"""The one small interface every place-where-things-run implements.

A launcher starts, stops and checks schedulers and workers. Worker calls are
*batched*: the backend hands a launcher every worker of one scale step at once,
so a batch system can submit them in one transaction and an API server can be
asked once per period about everything it runs for this gateway.

A launcher never sees the backend. What it may know of the gateway comes in a
``LauncherContext`` at ``setup``; what it needs to know about one cluster
(its VO, its accounting group) comes in ``ClusterFacts`` with each call.
"""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker


LOG_TAIL_BYTES = 2000


def log_tail(path: str) -> str:
    """The end of a log file (empty if it does not exist), for failure reasons."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class LauncherUnavailable(Exception):
    """The launcher's service (schedd, API server) cannot be reached right now.

    Not the workers' fault: the backend retries later and does not count it
    towards a cluster's worker failure limit.
    """


class Phase(enum.Enum):
    """Where a started scheduler or worker is, as its launcher sees it."""

    PENDING = "pending"  # accepted but not running yet (idle job, unscheduled pod)
    RUNNING = "running"  # the process/job/pod runs
    FAILED = "failed"  # it ended, disappeared or cannot start; ``reason`` says why


@dataclass(frozen=True)
class Check:
    """A launcher's answer about one scheduler or worker."""

    phase: Phase
    reason: str = ""

    @property
    def alive(self) -> bool:
        return self.phase in (Phase.PENDING, Phase.RUNNING)


@dataclass(frozen=True)
class KnownRecords:
    """Names of the clusters and workers the gateway has records for and has not stopped.

    Anything a launcher runs for this gateway outside these is a stray it may
    remove; anything inside may still be in the middle of being stopped.
    """

    clusters: frozenset[str]
    workers: frozenset[str]


class EventSink(Protocol):
    """Tell a cluster's owner something (shown in ``cluster.details()`` and the widget)."""

    def __call__(self, cluster_name: str, message: str, level: str = "info") -> None: ...


@dataclass(frozen=True)
class LauncherContext:
    """What a launcher may know of the gateway that runs it, handed to ``setup``."""

    api_url: str
    """The gateway API that schedulers heartbeat to."""
    heartbeat_period: float
    """Seconds between a scheduler's heartbeats."""
    proxy_tls_address: str
    """``host:port`` of the proxy's TLS listener (clients and remote workers reach
    schedulers there, by SNI ``daskgateway-<cluster>``)."""
    known_records: Callable[[], KnownRecords]
    """The records to reconcile against, read fresh on each call."""
    add_event: EventSink
    """Where to tell a cluster's owner what happened."""
    scheduler_launcher: Launcher
    """The launcher instance running this gateway's schedulers (maybe this one)."""
    name: str = ""
    """The pool this instance serves, or ``"scheduler"``: for log lines and errors."""


@dataclass(frozen=True)
class ClusterFacts:
    """What a launcher needs to know about a cluster beyond its record."""

    vo: str | None = None
    """The VO the cluster counts against (None: quotas are off)."""
    accounting_group: str | None = None
    """The VO's HTCondor accounting group, if it has one."""


class Launcher(LoggingConfigurable):
    """Base class of launchers.

    Subclasses set ``kind`` (the short name pools use in the config), declare
    their settings as configurable traits with ``help=`` (the admin's
    documentation; a pool may override any of them) and implement the methods
    below. A launcher that cannot run schedulers (an HTCondor pool, say) leaves
    the scheduler methods unimplemented.

    Subclasses implement these (who calls them, and when):

    ``setup(context)`` / ``cleanup()``
        Once at gateway start-up / shutdown. Connect, start background tasks;
        ``cleanup`` never stops running clusters (a restarted gateway adopts them).
    ``check_cluster_request(username, options, config, facts)``
        While a create request is processed, for the scheduler's launcher and
        the launchers of the pools the cluster may use. Raise ``ValueError``
        with a message for the analyst to refuse the cluster with a 4xx now,
        instead of failed starts later. Default: accept.
    ``start_scheduler(cluster)``
        Once per new cluster (upstream's ``do_start_cluster``): an async
        generator yielding JSON state dicts to checkpoint in the database.
    ``stop_scheduler(cluster)``
        Once per stopping cluster, after its workers: stop it, remove what was
        made for it.
    ``check_schedulers(clusters)``
        Every ``cluster_status_period`` for every submitted or running cluster:
        one ``Check`` per cluster, from as few queries as possible.
    ``start_workers(cluster, workers, facts)``
        Once per scale step and pool, with every new worker of the step.
        Returns one JSON state dict per worker, in order; raises if the batch
        failed (``LauncherUnavailable`` if the service is down).
    ``stop_workers(workers)``
        For workers scaled down, coalesced over ``stop_batch_window``: any
        mix of clusters, in as few calls as possible.
    ``stop_cluster_workers(cluster, workers)``
        Once per stopping cluster and launcher: every worker of the cluster,
        also ones without a record. Default: ``stop_workers(workers)``.
    ``check_workers(workers)``
        Every ``worker_status_period`` for submitted and running workers:
        one ``Check`` per worker, from one query where possible.
    ``remove_unknown(known)``
        Once after a restart: remove what runs for this gateway without a
        record in ``known``; returns how many things were removed.
    ``count_unknown(known)``
        Once at a start from a database without any cluster record (a first
        start, or an emptied or replaced database): how many things run for
        this gateway without a record in ``known``, changing nothing. Default: 0.
    ``reachability_hint(address)``
        When the scheduler cannot connect back to one of this launcher's
        workers: the setting or firewall rule to change, for the event.
    ``fetch_logs(cluster, workers, scheduler)``
        When the owner asks for logs, when a worker failed, and just before
        workers or a scheduler are stopped (while their logs still exist): the
        logs of these workers (and of the scheduler if ``scheduler``), by worker
        name and ``"scheduler"``, from the launcher's own source. Missing ones are
        left out. Default: none (the gateway then keeps no logs for this launcher).
    """

    kind: ClassVar[str] = ""

    context: LauncherContext

    async def setup(self, context: LauncherContext) -> None:
        """Connect to whatever this launcher drives. Called once at start-up."""
        self.context = context

    async def cleanup(self) -> None:
        """Release connections and stop background tasks. Running clusters are left alone."""

    def check_cluster_request(
        self, username: str, options: Mapping[str, Any], config: Any, facts: ClusterFacts
    ) -> None:
        """Raise ``ValueError`` to refuse a cluster this launcher could not run as asked."""

    def reachability_hint(self, address: str) -> str:
        """What the analyst (or admin) can do when a worker of this launcher at
        ``address`` cannot be reached from its scheduler."""
        return (
            "workers must accept connections from the scheduler and from each other "
            "(docs/networking.md)"
        )

    # -- schedulers ---------------------------------------------------------
    def start_scheduler(self, cluster: Cluster) -> AsyncIterator[dict[str, Any]]:
        """Start the cluster's scheduler, yielding state checkpoints to persist."""
        raise NotImplementedError(f"the {self.kind} launcher cannot run schedulers")

    async def stop_scheduler(self, cluster: Cluster) -> None:
        """Stop the scheduler and remove what was made for it."""
        raise NotImplementedError(f"the {self.kind} launcher cannot run schedulers")

    async def check_schedulers(self, clusters: Sequence[Cluster]) -> list[Check]:
        """One ``Check`` per cluster: is its scheduler pending, running, or why not."""
        raise NotImplementedError(f"the {self.kind} launcher cannot run schedulers")

    # -- workers (batched) ----------------------------------------------------
    async def start_workers(
        self, cluster: Cluster, workers: Sequence[Worker], facts: ClusterFacts
    ) -> list[dict[str, Any]]:
        """Start all ``workers`` of ``cluster`` as one batch; one state dict per worker."""
        raise NotImplementedError

    async def stop_workers(self, workers: Sequence[Worker]) -> None:
        """Stop these workers (any mix of clusters) in as few calls as possible."""
        raise NotImplementedError

    async def stop_cluster_workers(self, cluster: Cluster, workers: Sequence[Worker]) -> None:
        """Stop every worker this launcher runs for ``cluster``, with a record or not."""
        await self.stop_workers(workers)

    async def check_workers(self, workers: Sequence[Worker]) -> list[Check]:
        """Report on many workers at once, from one query where possible."""
        raise NotImplementedError

    async def remove_unknown(self, known: KnownRecords) -> int:
        """Remove what this launcher runs for this gateway without a record in ``known``."""
        return 0

    async def count_unknown(self, known: KnownRecords) -> int:
        """How many things run for this gateway without a record in ``known``; no change.

        Asked only when the database holds no cluster record at all, where
        ``remove_unknown`` would remove everything this gateway runs.
        """
        return 0

    # -- logs -------------------------------------------------------------------
    async def fetch_logs(
        self, cluster: Cluster, workers: Sequence[Worker], scheduler: bool = False
    ) -> dict[str, str]:
        """The logs of ``workers`` (and of the scheduler if ``scheduler``) by process name.

        Read from where they are now (files, the log API, job output); the gateway
        scrubs credentials, caps and keeps them. A log that cannot be read is left out.
        """
        return {}
