"""Logs and exit statuses of local processes, read from their cluster's directory.

Each process writes ``<cluster>/logs/<name>.log``; the fork server writes how
each of its children ended to ``<name>.log.exit`` (only a parent can learn that).
Both are read without following links and only when owned by the cluster's
account: what is read here ends up in messages and logs shown to that user.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .exit_reasons import exit_text
from .forkserver import EXIT_SUFFIX
from .local_isolation import UserRefused, read_tail

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

    from .local_isolation import Account


class LocalLogs:
    """Mixed into ``LocalLauncher``: ``fetch_logs`` and the exit reasons of its checks."""

    max_log_bytes = 1_000_000  # per process per fetch; the gateway's store caps again

    _exit_codes: dict[int, int]

    def cluster_directory(self, cluster: Cluster) -> str: ...  # from LocalLauncher

    def account_of(self, cluster: Cluster) -> Account | None: ...  # from LocalLauncher

    def _owner(self, cluster: Cluster) -> int | None:
        try:
            account = self.account_of(cluster)
        except UserRefused:
            return None
        return account.uid if account else os.geteuid()

    def _read_log(self, cluster: Cluster, filename: str, limit: int) -> str:
        owner = self._owner(cluster)
        if owner is None:
            return ""
        return read_tail(self.cluster_directory(cluster), "logs", filename, owner, limit)

    async def fetch_logs(
        self, cluster: Cluster, workers: Sequence[Worker], scheduler: bool = False
    ) -> dict[str, str]:
        """The log files of the scheduler and these workers, as they are now."""
        wanted = [(w.name, w.state.get("log") or f"worker-{w.name}") for w in workers]
        if scheduler:
            wanted.append(("scheduler", cluster.state.get("log") or "scheduler"))
        out = {}
        for name, log in wanted:
            text = self._read_log(cluster, f"{log}.log", self.max_log_bytes)
            if text:
                out[name] = text
        return out

    def ended(self, cluster: Cluster, state: dict) -> str:
        """How the process recorded in ``state`` ended: exit code or signal, if known."""
        code = self._exit_codes.get(state.get("pid", -1))  # our own children's
        if code is not None:
            return exit_text(code)
        log = state.get("log")
        raw = self._read_log(cluster, f"{log}.log{EXIT_SUFFIX}", 200) if log else ""
        try:
            status = json.loads(raw) if raw else {}
        except ValueError:
            status = {}
        if isinstance(status.get("signal"), int):
            return exit_text(signum=status["signal"])
        return exit_text(status["code"] if isinstance(status.get("code"), int) else None)

    def log_tail(self, cluster: Cluster, state: dict) -> str:
        """The end of the process's log, for a reason."""
        log = state.get("log")
        return self._read_log(cluster, f"{log}.log", 2000) if log else ""
