"""The embedded single-machine gateway: state directory, secrets, defaults, a runner.

``elastic-gateway serve`` keeps everything a restart needs in one directory:
the SQLite database, the database encryption key, the proxy token, the
password clients use, and the clusters' working directories. Secrets are files
of mode 0600, never command-line arguments or log lines.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from client_ext.gateway import CLIENT_FILE

SECRETS_FILE = "secrets.json"
DEFAULT_PORT = 8000


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by this user only (mode 0600 from creation, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)


def load_or_create_secrets(state_dir: Path) -> dict[str, str]:
    """Secrets of this gateway, generated on first start and kept for restarts."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / SECRETS_FILE
    if path.exists():
        return json.loads(path.read_text())
    data = {
        "db_encrypt_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "proxy_token": secrets.token_hex(32),
        "password": secrets.token_urlsafe(24),
    }
    write_private_json(path, data)
    return data


def embedded_config(state_dir: Path, port: int):
    """dask-gateway configuration of the embedded default (a config file may override)."""
    from traitlets.config import Config

    state_dir = state_dir.resolve()
    keys = load_or_create_secrets(state_dir)
    cores = os.cpu_count() or 1
    memory_gib = psutil.virtual_memory().total / 2**30

    c = Config()
    c.DaskGateway.backend_class = "gateway_backend.ElasticBackend"
    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
    c.SimpleAuthenticator.password = keys["password"]
    c.Proxy.address = f"127.0.0.1:{port}"
    c.Proxy.api_token = keys["proxy_token"]
    c.ElasticBackend.db_url = f"sqlite:///{state_dir / 'gateway.sqlite'}"
    c.ElasticBackend.db_encrypt_keys = [keys["db_encrypt_key"]]
    c.ElasticBackend.worker_pools = {"local": {"launcher": "local", "max_workers": 4 * cores}}
    c.ElasticBackend.max_worker_cores = cores
    c.ElasticBackend.max_worker_memory = max(0.25, round(memory_gib, 2))
    c.ElasticBackend.cluster_status_period = 2.0
    c.ElasticBackend.worker_status_period = 2.0
    c.ElasticBackend.cluster_heartbeat_period = 5
    c.LocalLauncher.work_directory = str(state_dir / "clusters")
    return c


def write_client_file(state_dir: Path, address: str) -> None:
    """Where and how local clients connect; mode 0600, so only this OS user can."""
    import getpass

    keys = load_or_create_secrets(state_dir)
    write_private_json(
        state_dir / CLIENT_FILE,
        {"address": address, "username": getpass.getuser(), "password": keys["password"]},
    )


def processes_in(directory: Path) -> list[psutil.Process]:
    """Processes whose working directory is ``directory`` or below it."""
    root = str(directory)
    found = []
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info.get("cwd") or ""
        if cwd == root or cwd.startswith(root + os.sep):
            found.append(proc)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """``elastic-gateway serve`` as a child process, for the demo, tests and benchmarks."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        config_file: Path | None = None,
        log_path: Path | None = None,
        extra_env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.config_file = config_file
        self.log_path = log_path or self.state_dir / "gateway.log"
        self.extra_env = extra_env or {}
        # Another gateway command (e.g. upstream dask-gateway-server, for comparisons).
        self.command = command
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> GatewayProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command or [sys.executable, "-m", "gateway_backend.cli", "serve"]
        if self.command is None:
            cmd += ["--state-dir", str(self.state_dir), "--port", str(self.port)]
            if self.config_file:
                cmd += ["--config", str(self.config_file)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.extra_env},
                start_new_session=True,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with code {self.proc.returncode}; log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.address + "/api/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready after {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client_credentials(self) -> dict[str, str]:
        return json.loads((self.state_dir / CLIENT_FILE).read_text())

    def kill(self) -> None:
        """SIGKILL the gateway (and its proxy) as a crash would; clusters keep running."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int | None:
        """Graceful stop (SIGTERM): the gateway stops its clusters first."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def leftover_processes(self) -> list[psutil.Process]:
        """Processes still running in this gateway's cluster directories."""
        return processes_in((self.state_dir / "clusters").resolve())

    def kill_leftovers(self) -> int:
        procs = self.leftover_processes()
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        return len(procs)
