"""Starting a batch of workers in a pool, and a scale-down that overtakes the start.

A mixin of ``ElasticBackend`` (it reads the backend's ``db``, ``queue``, ``events``,
``record_changes`` and settings); never used alone. A worker scaled away while its
start call runs is marked stopped at once (upstream's state machine), but it goes on
counting against quotas and pool caps until the call has returned and what it
started has been stopped.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from dask_gateway_server.backends.db_base import JobStatus

from .launchers import LauncherUnavailable
from .quotas import holds_resources
from .records import create_workers

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

    from .pools import WorkerPool


class WorkerStarts:
    """``_start_batch``, and the set of workers whose start call is running."""

    _starting: set[str]

    def holds_resources(self, worker: Worker) -> bool:
        """``quotas.holds_resources``, and true while the worker's start call runs."""
        return worker.name in self._starting or holds_resources(worker)

    async def _start_batch(self, cluster: Cluster, pool: WorkerPool, n: int) -> None:
        workers = create_workers(self.db, cluster, pool.name, n)
        self.record_changes.bump()  # written past DataManager's methods
        self.log.info("Starting %d workers for cluster %s in pool %s", n, cluster.name, pool.name)
        self._starting.update(w.name for w in workers)
        try:
            await self._start_and_record(cluster, pool, workers)
        finally:
            self._starting.difference_update(w.name for w in workers)
            if any(w.status >= JobStatus.STOPPED for w in workers):
                self.record_changes.bump()  # their resources count free only now
                self._wake_waiting()

    async def _start_and_record(
        self, cluster: Cluster, pool: WorkerPool, workers: list[Worker]
    ) -> None:
        n = len(workers)
        try:
            async with asyncio.timeout(self.worker_start_timeout):
                states = await pool.launcher.start_workers(cluster, workers, self.facts_of(cluster))
        except asyncio.CancelledError:
            raise
        except LauncherUnavailable as exc:
            # The pool's service is down, not the workers' fault: retry, do not count.
            self.events.add(
                cluster.name,
                f"pool {pool.name} is unavailable ({exc}); retrying in "
                f"{self.launcher_retry_delay:g}s",
                "warning",
            )
            stopped = {
                "status": JobStatus.SUBMITTED,
                "target": JobStatus.STOPPED,
                "close_expected": True,
            }
            self.db.update_workers([(w, dict(stopped)) for w in workers])
            for w in workers:
                self.queue.put(w)
            self.queue.put_after(cluster, self.launcher_retry_delay)
            return
        except Exception as exc:
            reason = f"pool {pool.name} could not start {n} worker(s): {exc}"
            self.log.warning("Cluster %s: %s", cluster.name, reason, exc_info=exc)
            self._record_worker_failure(cluster, reason)
            self.db.update_workers(
                [(w, {"status": JobStatus.SUBMITTED, "target": JobStatus.FAILED}) for w in workers]
            )
            for w in workers:
                self.queue.put(w)
            return
        updates, stopped_meanwhile = [], []
        for worker, state in zip(workers, states, strict=True):
            state = {"pool": pool.name, **state}
            if worker.status >= JobStatus.STOPPED:
                # Scaled away or its cluster stopped meanwhile: record, then stop it below.
                stopped_meanwhile.append(worker)
                updates.append((worker, {"state": state}))
            else:
                updates.append((worker, {"state": state, "status": JobStatus.SUBMITTED}))
        self.db.update_workers(updates)
        if stopped_meanwhile:
            await pool.launcher.stop_workers(stopped_meanwhile)
