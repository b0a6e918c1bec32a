"""What a cluster's scheduler may report to the gateway, checked, and the words shown for it.

The scheduler runs the analyst's code, so its reports are untrusted input: each
kind has a fixed shape, strings are bounded, versions must look like versions,
and the event text is the gateway's own, built from those checked fields. A
report that does not fit is refused with what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .launchers.exit_reasons import MEMORY_ADVICE, MEMORY_KILLED
from .scheduler_versions import ADVICE, CHECKED
from .usertext import one_line, quoted

# The packages ``scheduler_versions`` compares (its advice is the events' too); no others.
CHECKED_PACKAGES = CHECKED
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}")


class BadReport(ValueError):
    """A report that does not have the shape of its kind (the message says which)."""


@dataclass(frozen=True)
class Unreachable:
    worker: str
    address: str
    error: str


@dataclass(frozen=True)
class Clients:
    connected: int
    detached: bool


@dataclass(frozen=True)
class VersionMismatch:
    role: str  # "client" or "worker"
    packages: dict[str, tuple[str, str]]  # package -> (theirs, the scheduler's)
    refused: bool
    worker: str | None = None

    def text(self) -> str:
        """The event the owner reads: what differs, what happened, what to do."""
        listed = "; ".join(
            f"{pkg} {theirs} on the {self.role} but {ours} on the scheduler"
            for pkg, (theirs, ours) in self.packages.items()
        )
        who = f"worker {self.worker}" if self.worker else f"a {self.role}"
        outcome = (
            "was refused" if self.refused else "was allowed, but its tasks may fail to unpickle"
        )
        return f"version mismatch: {who} {outcome} ({listed}); to fix: {ADVICE[self.role]}"


@dataclass(frozen=True)
class WorkerLost:
    """A worker the scheduler lost unexpectedly (``worker_loss_preload``)."""

    worker: str
    tasks: tuple[str, ...]  # the keys it was running, at most MAX_LOST_TASKS
    memory_bytes: int | None  # in use when its nanny restarted it for memory, else None

    def text(self) -> str:
        """The analyst's sentence: which task it ran, and whether memory was why."""
        running = ", ".join(quoted(t, 100) for t in self.tasks)
        during = f" while running task {running}" if running else ""
        if self.memory_bytes is not None:
            return one_line(
                f"worker {self.worker} was {MEMORY_KILLED}{during} "
                f"({self.memory_bytes / 2**30:.2f} GiB in use; its nanny restarted it): "
                f"{MEMORY_ADVICE}"
            )
        return one_line(f"worker {self.worker} was lost{during}")

    @property
    def level(self) -> str:
        return "error" if self.memory_bytes is not None else "warning"


MAX_LOST_TASKS = 5


def _worker_lost(body: Mapping[str, Any]) -> WorkerLost:
    worker, tasks, memory = body.get("worker"), body.get("tasks"), body.get("memory_bytes")
    if not (
        isinstance(worker, str)
        and NAME.fullmatch(worker)
        and isinstance(tasks, list)
        and len(tasks) <= MAX_LOST_TASKS
        and all(isinstance(t, str) for t in tasks)
        and (memory is None or (isinstance(memory, int) and not isinstance(memory, bool)))
    ):
        raise BadReport(
            "expected {kind: 'worker_lost', worker, tasks: [at most 5 task keys], "
            "memory_bytes: int or null}"
        )
    return WorkerLost(worker, tuple(t[:200] for t in tasks), memory)


def _strings(body: Mapping[str, Any], fields: tuple[str, ...]) -> bool:
    return all(isinstance(body.get(f), str) for f in fields)


def _version_mismatch(body: Mapping[str, Any]) -> VersionMismatch:
    expected = (
        "expected {kind: 'version_mismatch', role: 'client'|'worker', refused: bool, "
        "packages: {package: [theirs, scheduler's]}, worker (for role 'worker')}"
    )
    role, packages, refused = body.get("role"), body.get("packages"), body.get("refused")
    if role not in ADVICE or not isinstance(packages, dict) or not isinstance(refused, bool):
        raise BadReport(expected)
    if not packages or not set(packages) <= set(CHECKED_PACKAGES):
        raise BadReport(f"packages must be some of {', '.join(CHECKED_PACKAGES)}")
    checked = {}
    for pkg in CHECKED_PACKAGES:
        pair = packages.get(pkg)
        if pair is None:
            continue
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, str) and VERSION.fullmatch(v) for v in pair)
        ):
            raise BadReport(f"packages[{pkg!r}] must be two version strings")
        checked[pkg] = (pair[0], pair[1])
    worker = body.get("worker")
    if role == "worker" and not (isinstance(worker, str) and NAME.fullmatch(worker)):
        raise BadReport(expected)
    return VersionMismatch(role, checked, refused, worker if role == "worker" else None)


def parse_report(body: Any) -> Unreachable | Clients | VersionMismatch | WorkerLost:
    """The checked report, or ``BadReport`` saying what the kind expects."""
    kind = body.get("kind") if isinstance(body, dict) else None
    if kind == "unreachable":
        if not _strings(body, ("worker", "address", "error")):
            raise BadReport("expected {kind: 'unreachable', worker, address, error} (strings)")
        return Unreachable(
            body["worker"][:200], body["address"][:200], one_line(body["error"], 300)
        )
    if kind == "clients":
        connected, detached = body.get("connected"), body.get("detached")
        if (
            isinstance(connected, bool)
            or not isinstance(connected, int)
            or not 0 <= connected < 1_000_000
            or not isinstance(detached, bool)
        ):
            raise BadReport("expected {kind: 'clients', connected: int >= 0, detached: bool}")
        return Clients(connected, detached)
    if kind == "version_mismatch":
        return _version_mismatch(body)
    if kind == "worker_lost":
        return _worker_lost(body)
    raise BadReport(
        "kind must be one of 'unreachable', 'clients', 'version_mismatch', 'worker_lost'"
    )
