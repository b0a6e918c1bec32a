"""The one small interface every place-where-things-run implements.

A launcher starts, stops and checks schedulers and workers. Worker calls are
*batched*: the backend hands a launcher every worker of one scale step at once,
so a batch system can submit them in one transaction and an API server can be
asked once per period about everything it runs for this gateway.
"""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

    from ..backend import ElasticBackend


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


class WorkerPhase(enum.Enum):
    """Where a started worker is, as its launcher sees it."""

    PENDING = "pending"  # accepted but not running yet (idle job, unscheduled pod)
    RUNNING = "running"  # the process/job/pod runs
    FAILED = "failed"  # it ended or cannot start; ``reason`` says why
    GONE = "gone"  # the launcher has no trace of it


@dataclass(frozen=True)
class WorkerCheck:
    """A launcher's answer about one worker."""

    phase: WorkerPhase
    reason: str = ""

    @property
    def alive(self) -> bool:
        return self.phase in (WorkerPhase.PENDING, WorkerPhase.RUNNING)


class Launcher(LoggingConfigurable):
    """Base class of launchers.

    Subclasses set ``kind`` (the short name pools use in the config) and
    implement the coroutines below. A launcher that cannot run schedulers
    (an HTCondor pool, say) leaves the scheduler methods unimplemented.
    """

    kind: ClassVar[str] = ""

    backend: ElasticBackend

    async def setup(self, backend: ElasticBackend) -> None:
        """Connect to whatever this launcher drives. Called once at start-up."""
        self.backend = backend

    async def cleanup(self) -> None:
        """Release connections. Running clusters are left alone."""

    def check_cluster_request(self, username: str, options: Mapping[str, Any], config: Any) -> None:
        """Refuse a new cluster this launcher could not run as asked.

        Raise ``ValueError`` with a message for the analyst: it becomes the answer
        to the create request, instead of failed starts later. Called for the
        scheduler's launcher and those of the pools the cluster may use. The
        default accepts anything.
        """

    # -- schedulers ---------------------------------------------------------
    def start_scheduler(self, cluster: Cluster) -> AsyncIterator[dict[str, Any]]:
        """Start the cluster's scheduler, yielding state checkpoints to persist."""
        raise NotImplementedError(f"the {self.kind} launcher cannot run schedulers")

    async def stop_scheduler(self, cluster: Cluster) -> None:
        """Stop the scheduler and remove what was made for it."""
        raise NotImplementedError(f"the {self.kind} launcher cannot run schedulers")

    async def check_schedulers(self, clusters: Sequence[Cluster]) -> list[bool]:
        """For each cluster: is its scheduler still pending or running?"""
        raise NotImplementedError(f"the {self.kind} launcher cannot run schedulers")

    # -- workers (batched) ----------------------------------------------------
    async def start_workers(
        self, cluster: Cluster, workers: Sequence[Worker]
    ) -> list[dict[str, Any]]:
        """Start all ``workers`` of ``cluster`` as one batch.

        Returns one JSON-serialisable state dict per worker, in order. Raises if
        the batch as a whole could not be started.
        """
        raise NotImplementedError

    async def stop_workers(self, workers: Sequence[Worker]) -> None:
        """Stop these workers (any mix of clusters) in as few calls as possible."""
        raise NotImplementedError

    async def stop_cluster_workers(self, cluster: Cluster, workers: Sequence[Worker]) -> None:
        """Stop every worker this launcher runs for ``cluster``.

        ``workers`` are the records the gateway knows; a launcher that can
        select by cluster (a constraint, a label) should also catch ones it
        has no record of.
        """
        await self.stop_workers(workers)

    async def check_workers(self, workers: Sequence[Worker]) -> list[WorkerCheck]:
        """Report on many workers at once, from one query where possible."""
        raise NotImplementedError

    async def remove_unknown(self, known_clusters: set[str], known_workers: set[str]) -> int:
        """Remove what this launcher runs for this gateway but the database does not know.

        Called after a gateway restart. Returns how many things were removed.
        """
        return 0
