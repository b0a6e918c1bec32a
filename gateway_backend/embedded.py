"""The embedded single-machine gateway: state directory, secrets, defaults, a runner.

``elastic-gateway serve`` keeps everything a restart needs in one directory:
the SQLite database, the database encryption key, the proxy token, the
password clients use, and the clusters' working directories. Secrets are files
of mode 0600, never command-line arguments or log lines. The directory is mode
0700 and locked by the one ``serve`` that uses it: a second one would adopt the
first one's clusters and stop them when their heartbeats go elsewhere.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from client_ext.auth import CLIENT_FILE

from .launchers.staging import write_private_file

SECRETS_FILE = "secrets.json"
LOCK_FILE = "serve.lock"
DEFAULT_PORT = 8000


class StateDirectoryBusy(Exception):
    """Another ``elastic-gateway serve`` holds the state directory."""

    def __init__(self, state_dir: Path, holder: str) -> None:
        self.state_dir = state_dir
        self.holder = holder
        who = f"pid {holder}" if holder.isdigit() else "pid unknown"
        super().__init__(
            f"the state directory {state_dir} is in use by another `elastic-gateway serve` "
            f"({who}). Stop that gateway first, or give this one its own --state-dir."
        )


def lock_state_directory(state_dir: Path) -> int:
    """Lock ``state_dir`` for this process's lifetime; the open descriptor holds the lock.

    ``flock`` on a file in the directory: the kernel releases it when the process
    ends however it ends (SIGKILL included). The descriptor is close-on-exec, so
    the proxy and cluster processes, which outlive a crash, never hold it. The
    holder's pid is written into the file for the refusal message.
    Raises ``StateDirectoryBusy`` when another process holds it.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        os.close(fd)
        raise StateDirectoryBusy(state_dir, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def tighten_state_directory(state_dir: Path) -> list[str]:
    """Make ``state_dir`` 0700 and its top-level files 0600; say what was wider.

    A directory made by an older version or by hand may be 0755 with a
    world-readable database in it. Refuses a directory owned by another user.
    """
    st = os.stat(state_dir)
    if st.st_uid != os.getuid():
        raise PermissionError(
            f"the state directory {state_dir} belongs to uid {st.st_uid}, not to this user; "
            "use a --state-dir of your own"
        )
    changed = []
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(state_dir, 0o700)
        changed.append(
            f"state directory {state_dir} was mode {stat.S_IMODE(st.st_mode):04o}; "
            "set it to 0700 (only its owner may read the database and secrets)"
        )
    for entry in os.scandir(state_dir):
        if entry.is_file(follow_symlinks=False):
            mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
            if mode & 0o077:
                os.chmod(entry.path, mode & 0o700)
                changed.append(f"{entry.path} was mode {mode:04o}; set it to {mode & 0o700:04o}")
    return changed


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by this user only: a new 0600 file replaces the old in one rename,
    so a crash mid-write never leaves half a secrets file and an old wider mode never stays."""
    write_private_file(str(path), json.dumps(data, indent=2).encode())


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
    c.ElasticBackend.log_directory = str(state_dir / "logs")
    import getpass  # its clusters are for the one OS user who can read the client file

    c.LocalLauncher.single_user = getpass.getuser()
    return c


def write_client_file(state_dir: Path, address: str, identity_key: str) -> None:
    """Where and how local clients connect; mode 0600, so only this OS user can.

    ``identity_key`` (new at every start) lets clients check that the server at
    ``address`` is this gateway before they send it the password.
    """
    import getpass

    keys = load_or_create_secrets(state_dir)
    write_private_json(
        state_dir / CLIENT_FILE,
        {
            "address": address,
            "username": getpass.getuser(),
            "password": keys["password"],
            "identity_key": identity_key,
        },
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
        prefix: str = "",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.config_file = config_file
        self.log_path = log_path or self.state_dir / "gateway.log"
        self.extra_env = extra_env or {}
        # Another gateway command (e.g. upstream dask-gateway-server, for comparisons).
        self.command = command
        # The configured c.Proxy.prefix: the gateway answers only below it.
        self.prefix = prefix.rstrip("/")
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def start(self, timeout: float = 60) -> GatewayProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cmd = self.command or [sys.executable, "-m", "gateway_backend.cli", "serve"]
        if self.command is None:
            cmd += ["--state-dir", str(self.state_dir), "--port", str(self.port)]
            if self.config_file:
                cmd += ["--config", str(self.config_file)]
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
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
