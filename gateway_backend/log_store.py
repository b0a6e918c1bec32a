"""Schedulers' and workers' logs kept by the gateway for their owner, bounded.

Launchers fetch logs from their own source (files, the Kubernetes log API, job
output) while the processes live and just before they are removed; this store
keeps the latest copy per process in the gateway's state, so ``cluster.logs()``
answers for stopped and failed workers and clusters too. Everything here is
bounded: bytes per process, bytes per cluster, and how long a stopped cluster's
logs stay. Files are 0600 in 0700 directories, and credentials are scrubbed
before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping

# Names the store accepts for a cluster (uuid hex) and a process (worker names, "scheduler").
CLUSTER_NAME = re.compile(r"[0-9a-f]{32}")
PROCESS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
META = ".meta.json"
REDACTED = "[redacted]"

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)
# "Authorization: token abc", "Bearer abc", "api_token=abc", "DASK_GATEWAY_API_TOKEN=abc".
# Bounded repetitions only: logs are user-controlled, and scrubbing must stay linear.
_CREDENTIAL_WORDS = re.compile(
    r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?[a-z]+\s+|bearer\s+|"
    r"(?:token|password|secret)[a-z0-9_]{0,40}['\"]?\s*[=:]\s*['\"]?)"
    r"[A-Za-z0-9+/=._~-]{8,}"
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets, private keys or token-looking assignments."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    text = _PRIVATE_KEY.sub("[private key redacted]", text)
    return _CREDENTIAL_WORDS.sub(lambda m: m.group(1) + REDACTED, text)


def last_bytes(text: str, limit: int) -> str:
    """The end of ``text``, at most ``limit`` UTF-8 bytes, starting at a line when possible."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    cut = data[len(data) - limit :]
    newline = cut.find(b"\n")
    if 0 <= newline < len(cut) - 1:
        cut = cut[newline + 1 :]
    return cut.decode("utf-8", "ignore")


def tail_lines(text: str, lines: int | None) -> str:
    """The last ``lines`` lines of ``text`` (all of it for None)."""
    if lines is None:
        return text
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


class LogStore:
    """Per cluster a 0700 directory of one 0600 file per process and an owner record."""

    def __init__(
        self,
        directory: str,
        max_bytes_per_process: int,
        max_bytes_per_cluster: int,
        keep_for: float,
    ) -> None:
        self.directory = directory
        self.max_bytes_per_process = max_bytes_per_process
        self.max_bytes_per_cluster = max_bytes_per_cluster
        self.keep_for = keep_for

    def _cluster_dir(self, cluster: str) -> str:
        if not CLUSTER_NAME.fullmatch(cluster):
            raise ValueError(f"not a cluster name: {cluster!r:.80}")
        return os.path.join(self.directory, cluster)

    def save(
        self,
        cluster: str,
        owner: str,
        logs: Mapping[str, str],
        secrets: Iterable[str] = (),
    ) -> None:
        """Keep the latest ``logs`` (process name -> text) of ``owner``'s ``cluster``."""
        if not logs:
            return
        secrets = list(secrets)
        path = self._cluster_dir(cluster)
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        os.makedirs(path, mode=0o700, exist_ok=True)
        meta = self._meta(cluster)
        if not meta:
            self._write(os.path.join(path, META), json.dumps({"owner": owner}))
        for name, text in logs.items():
            if not PROCESS_NAME.fullmatch(name) or not text:
                continue
            clean = last_bytes(scrub(text, secrets), self.max_bytes_per_process)
            self._write(os.path.join(path, name + ".log"), clean)
        self._cap_cluster(path)

    def _cap_cluster(self, path: str) -> None:
        """Over the per-cluster cap: every process keeps the same share, its newest lines."""
        files = [e for e in os.scandir(path) if e.name.endswith(".log") and e.is_file()]
        total = sum(e.stat().st_size for e in files)
        if total <= self.max_bytes_per_cluster:
            return
        share = max(1, self.max_bytes_per_cluster // len(files))
        for entry in files:
            if entry.stat().st_size > share:
                with open(entry.path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                self._write(entry.path, last_bytes(text, share))

    @staticmethod
    def _write(path: str, text: str) -> None:
        """Replace ``path`` by a new 0600 file (written aside, then renamed over it)."""
        tmp = path + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, text.encode("utf-8", "replace"))
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _meta(self, cluster: str) -> dict:
        try:
            with open(os.path.join(self._cluster_dir(cluster), META)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def owner(self, cluster: str) -> str | None:
        """Whose cluster's logs these are (None: none kept)."""
        return self._meta(cluster).get("owner")

    def read(self, cluster: str, worker: str | None = None, tail: int | None = None) -> dict:
        """Kept logs by process name (only ``worker``'s if given), last ``tail`` lines each."""
        path = self._cluster_dir(cluster)
        try:
            names = sorted(e.name[:-4] for e in os.scandir(path) if e.name.endswith(".log"))
        except OSError:
            return {}
        out = {}
        for name in names:
            if worker is not None and name != worker:
                continue
            try:
                with open(os.path.join(path, name + ".log"), encoding="utf-8") as f:
                    out[name] = tail_lines(f.read(), tail)
            except OSError:
                continue
        return out

    def stopped(self, cluster: str, now: float | None = None) -> None:
        """The cluster stopped: its logs go ``keep_for`` seconds from ``now``."""
        meta = self._meta(cluster)
        if meta:
            meta["stopped"] = time.time() if now is None else now
            self._write(os.path.join(self._cluster_dir(cluster), META), json.dumps(meta))

    def prune(self, now: float | None = None) -> int:
        """Remove the logs of clusters stopped more than ``keep_for`` seconds ago."""
        now = time.time() if now is None else now
        removed = 0
        if not os.path.isdir(self.directory):
            return 0
        for entry in os.scandir(self.directory):
            if not (entry.is_dir(follow_symlinks=False) and CLUSTER_NAME.fullmatch(entry.name)):
                continue
            stopped = self._meta(entry.name).get("stopped")
            if stopped is not None and now - stopped >= self.keep_for:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed
