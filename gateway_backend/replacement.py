"""Lost workers are replaced, with back-off, under a per-cluster failure budget.

A worker is *lost* when its process, job or pod ends or disappears, before or after it
connected, without anyone asking it to leave. Everything that asks (the analyst's
scale-down, adaptive scaling retiring a worker, a burst move, stopping the cluster) marks
the worker expected to close or stops it, and upstream's state machine then stops rather
than fails it: only lost workers reach ``FAILED`` while their cluster runs. The backend
then starts workers up to the requested count again, through the same quota and pool
checks as any scale-up, so a replacement never overshoots a VO's quota or a pool's cap.

Upstream dask-gateway replaces at once and without limit once a worker has connected (a
crash loop when every worker dies the same way), and fails the whole cluster, running
workers included, after a few workers in a row fail to *start*. Here each round of losses
delays the cluster's next worker start (doubling up to a maximum), and after
``budget`` rounds of losses of young workers in a row the cluster stops starting workers,
says so once with the repeated reason, and keeps what still runs. An explicit scale
request from the analyst (who has fixed the cause, or wants to try again) renews the
budget. Adaptive scaling does not: it would restart the crash loop on its own.

Kept in memory: a restarted gateway starts every cluster with a fresh budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.utils import timestamp

from .launchers import Check, Launcher, Phase
from .usertext import one_line

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker


@dataclass
class _Losses:
    rounds: int = 0  # rounds of losses counted towards the budget, in a row
    last_counted: float = -math.inf  # when the last round began (clock seconds)
    resume_at: float = 0.0  # no worker starts before this (clock seconds)
    reasons: list[str] = field(default_factory=list)  # one per counted round, names blanked
    last_reason: str = ""
    spent: bool = False


@dataclass(frozen=True)
class Loss:
    """What one lost worker meant for its cluster, and what to tell its owner (or "")."""

    delay: float
    """Seconds until the cluster may start workers again (``math.inf``: budget spent)."""
    message: str = ""
    level: str = "warning"


class FailureBudget:
    """Per cluster: rounds of lost workers, the back-off they impose, and the budget.

    Losses while an earlier round's back-off runs belong to that round: workers of one
    scale step that fail together (a broken image) spend one unit, not one per worker.
    A lost worker that had been connected for ``healthy_after`` seconds is not a crash
    loop (a preempted job, a drained node): it is replaced after the first back-off and
    clears the count, and so does a round more than ``healthy_after`` after the last.
    """

    def __init__(
        self,
        budget: int,
        backoff: float,
        backoff_max: float,
        healthy_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.clock = clock
        self._clusters: dict[str, _Losses] = {}

    def lost(
        self, cluster: str, reason: str, connected_for: float | None = None, worker: str = ""
    ) -> Loss:
        """A worker of ``cluster`` was lost; ``connected_for``: seconds since it was started,
        if it had connected (None: it never did); ``worker``: its name, blanked out of
        ``reason`` when comparing reasons."""
        now = self.clock()
        losses = self._clusters.setdefault(cluster, _Losses())
        if losses.spent:
            return Loss(math.inf)
        if now < losses.resume_at:
            return Loss(losses.resume_at - now)  # the same round as the loss before
        healthy = connected_for is not None and connected_for >= self.healthy_after
        who, reason = f"worker {worker}" if worker else "a worker", one_line(reason)
        if healthy or now - losses.last_counted >= self.healthy_after:
            losses.rounds, losses.reasons = 0, []
        if healthy:
            losses.resume_at = now + self.backoff
            return Loss(
                self.backoff,
                f"{who} lost after {connected_for:.0f}s of work ({reason}); "
                f"replacing it in {self.backoff:g}s",
            )
        losses.rounds += 1
        losses.last_counted = now
        losses.last_reason = reason
        blanked = losses.last_reason.replace(worker, "*") if worker else losses.last_reason
        losses.reasons.append(blanked)
        if losses.rounds >= self.budget:
            losses.spent = True
            return Loss(math.inf, self._spent_message(losses), "error")
        delay = min(self.backoff * 2 ** (losses.rounds - 1), self.backoff_max)
        losses.resume_at = now + delay
        return Loss(
            delay,
            f"{who} lost ({reason}); replacing lost workers in {delay:g}s "
            f"(failure {losses.rounds} of the budget of {self.budget})",
        )

    def _spent_message(self, losses: _Losses) -> str:
        same = len(set(losses.reasons)) == 1
        why = f"each time: {losses.last_reason}" if same else f"last: {losses.last_reason}"
        return (
            f"stopped replacing lost workers: workers were lost {losses.rounds} times in a row "
            f"(ElasticBackend.worker_failure_budget={self.budget}); {why}. Fix the cause (the "
            "profile, the worker environment or the pool), then scale the cluster again to "
            "retry."
        )

    def wait(self, cluster: str) -> float:
        """Seconds before ``cluster`` may start workers: 0 now, ``math.inf`` once spent."""
        losses = self._clusters.get(cluster)
        if losses is None:
            return 0.0
        if losses.spent:
            return math.inf
        return max(0.0, losses.resume_at - self.clock())

    def renew(self, cluster: str) -> bool:
        """The analyst asked for workers again: a fresh budget. True if it had been spent."""
        losses = self._clusters.pop(cluster, None)
        return losses is not None and losses.spent

    def forget(self, cluster: str) -> None:
        self._clusters.pop(cluster, None)


def why_lost(worker: Worker, check: Check | None, last_failure: str) -> dict[str, Any]:
    """``FailureBudget.lost``'s arguments for ``worker``: why it was lost, in the analyst's
    words, and how long it had been connected (seconds since it was started; None if it
    never connected)."""
    reason, connected_for = _why_lost(worker, check, last_failure)
    return {"reason": reason, "connected_for": connected_for, "worker": worker.name}


def _why_lost(worker: Worker, check: Check | None, last_failure: str) -> tuple[str, float | None]:
    if worker.status == JobStatus.RUNNING:
        age = max(0.0, (timestamp() - worker.start_time) / 1000)
        if check is not None and check.phase is Phase.FAILED and check.reason:
            return check.reason, age
        return "it left its scheduler without being asked to", age
    if check is not None and check.phase is Phase.FAILED and check.reason:
        return check.reason, None
    if check is not None:
        seen = check.reason or check.phase.value
        return f"it did not connect within ElasticBackend.worker_start_timeout ({seen})", None
    return last_failure or "it could not be started", None


async def checked_closures(
    cluster: Cluster,
    closed: Iterable[str],
    launcher_of: Callable[[Worker], Launcher],
    log: logging.Logger,
) -> dict[str, Check]:
    """Launchers' checks of the workers the scheduler reports closed but the gateway still
    counts running (a Nanny may be restarting them, ``RestartGrace``).

    A worker whose process, job or pod has ended gets no grace: it is replaced at once
    instead of after ``worker_restart_grace``. Answered from the launchers' caches (one
    schedd query or watch per period), so a heartbeat costs no extra call to a service.
    """
    by_launcher: dict[Launcher, list[Worker]] = {}
    for name in closed:
        w = cluster.workers.get(name)
        if w is not None and w.status == JobStatus.RUNNING == w.target and not w.close_expected:
            by_launcher.setdefault(launcher_of(w), []).append(w)
    checks: dict[str, Check] = {}
    for launcher, workers in by_launcher.items():
        try:
            answers = await launcher.check_workers(workers)
        except Exception as exc:  # a heartbeat must not fail: these wait out the grace
            log.warning("Checking closed workers (%s launcher) failed: %s", launcher.kind, exc)
            continue
        checks.update((w.name, check) for w, check in zip(workers, answers, strict=True))
    return checks
