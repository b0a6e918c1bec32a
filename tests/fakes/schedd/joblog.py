"""The job queue log: every queue transaction appended to ``<workdir>/spool/job_queue.log``.

A real schedd writes each queue transaction to its job queue log in SPOOL and fsyncs it
before answering, and a restarted schedd rebuilds its queue by replaying the log (ignoring
an incomplete last transaction), then rewrites the log from that state so it stays small.
This is the same at the stand-in's fidelity: one JSON line per transaction. A line holds
any of these keys, applied in this order:

* ``next``: the next ClusterId to hand out (ids are never reused, even after a crash);
* ``edits``: ``[attr, expression, ["c.p", ...]]`` triples, from ``edit`` (lease renewals of
  many jobs stay one short line, as in the schedd's SetAttribute records);
* ``jobs``: ``{"c.p": record}`` with the job's whole ad (new-style ClassAd text) and what
  the daemon needs to find its starter again (see ``JobQueue.record``);
* ``left``: ``{"c.p": ad}``, jobs that left the queue, with their last ad (to history);
* ``history``: ads of jobs that left the queue earlier (written by compaction only).

The file's modification time is also the daemon's heartbeat (touched every policy tick), so
a restarted daemon knows how long it was down, which decides whether job leases expired.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import classad2

log = logging.getLogger("htcondor_standin")

#: Jobs per line when compaction rewrites the log.
_CHUNK = 200


@dataclass
class LogState:
    """The queue as the log describes it: records by "c.p", history ads, the next ClusterId.

    Ads stay text until an edit or ``parsed()`` needs them: a long log rewrites the same
    job many times, and parsing is the slow part of a replay.
    """

    next_cluster: int = 1
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    def apply(self, txn: dict[str, Any]) -> None:
        """Apply one committed transaction."""
        if "next" in txn:
            self.next_cluster = max(self.next_cluster, int(txn["next"]))
        for attr, value, keys in txn.get("edits", ()):
            expr = classad2.ExprTree(value)
            for key in keys:
                if key in self.jobs:
                    self._ad(key)[attr] = expr
        for key, record in txn.get("jobs", {}).items():
            self.jobs[key] = dict(record)
        for key, ad in txn.get("left", {}).items():
            self.jobs.pop(key, None)
            self.history.append(ad)
        self.history.extend(txn.get("history", ()))

    def _ad(self, key: str) -> classad2.ClassAd:
        record = self.jobs[key]
        if isinstance(record["ad"], str):
            record["ad"] = classad2.parseOne(record["ad"])
        return record["ad"]

    def parsed(self, history_size: int) -> tuple[dict[str, dict[str, Any]], list[classad2.ClassAd]]:
        """The job records with parsed ads, and the last ``history_size`` history ads."""
        for key in self.jobs:
            self._ad(key)
        recent = self.history[-history_size:] if history_size > 0 else []
        return self.jobs, [classad2.parseOne(ad) for ad in recent]


class JobLog:
    """Append-only, fsynced JSON-lines log of queue transactions (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: Any = None

    def replay(self) -> tuple[LogState, float | None]:
        """The state the log describes, and when the daemon that wrote it was last alive.

        A last line without its newline is a transaction torn by a crash: ignored, as the
        schedd ignores an incomplete transaction. A damaged line ends the replay there.
        """
        state = LogState()
        try:
            data = self.path.read_bytes()
            last_alive: float | None = self.path.stat().st_mtime
        except FileNotFoundError:
            return state, None
        lines = data.split(b"\n")
        if lines[-1]:
            log.warning("ignoring an incomplete last transaction in %s", self.path)
        for number, line in enumerate(lines[:-1], 1):
            try:
                txn = json.loads(line)
                state.apply(txn)
            except Exception as exc:  # a damaged transaction: keep what came before it
                log.error("%s line %d is damaged (%r); replay stops there", self.path, number, exc)
                break
        return state, last_alive

    def rewrite(self, next_cluster: int, records: dict[str, dict], history: list[str]) -> None:
        """Compaction: replace the log, atomically, by the current state; then append to it."""
        self.close()
        partial = self.path.with_name(self.path.name + ".new")
        with open(partial, "wb") as f:
            f.write(_line({"next": next_cluster}))
            for i in range(0, len(history), _CHUNK):
                f.write(_line({"history": history[i : i + _CHUNK]}))
            keys = list(records)
            for i in range(0, len(keys), _CHUNK):
                f.write(_line({"jobs": {k: records[k] for k in keys[i : i + _CHUNK]}}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._file = open(self.path, "ab")

    def append(self, txn: dict[str, Any]) -> None:
        """Commit one transaction: written and fsynced before the caller answers anyone."""
        if self._file is None:
            self._file = open(self.path, "ab")
        self._file.write(_line(txn))
        self._file.flush()
        os.fsync(self._file.fileno())

    def heartbeat(self) -> None:
        """Mark the daemon alive now (the log's mtime), for lease decisions after a crash."""
        with contextlib.suppress(OSError):
            now = time.time()
            os.utime(self.path, (now, now))

    def close(self) -> None:
        """Close the append handle (every transaction is already on disk)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
