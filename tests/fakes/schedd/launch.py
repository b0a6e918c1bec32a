"""Start and stop the stand-in daemon from a test or benchmark, and find its leftovers.

The daemon is a separate process because a real schedd outlives the gateway; this module is
what makes sure that, unlike a real one, it and every job it started end with the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .client import StandinSchedd
from .control import StandinControl

T = TypeVar("T")

#: Unix socket paths must fit in sun_path (108 bytes); pytest tmp paths can be longer.
_MAX_SOCKET_PATH = 100


class Standin:
    """What ``start_standin`` yields: a client factory, the control channel, and the daemon.

    Unpacks as ``client_factory, control``. ``kill_daemon()`` SIGKILLs the daemon (its jobs
    keep running, as on a crashed schedd's execute nodes) and ``restart()`` starts it again
    on the same workdir and socket, where it replays its job queue log.
    """

    def __init__(
        self,
        client_factory: Callable[..., StandinSchedd],
        control: StandinControl,
        start: Callable[[], subprocess.Popen[bytes]],
    ) -> None:
        self.client_factory = client_factory
        self.control = control
        self._start = start
        self.daemon: subprocess.Popen[bytes] | None = start()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.client_factory, self.control))

    def kill_daemon(self) -> None:
        """SIGKILL the daemon, as a crash would: no clean-up, its jobs left running."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(timeout=10)

    def restart(self) -> None:
        """Start the daemon again (after ``kill_daemon()`` or a shutdown); wait for its answer."""
        if self.daemon is not None and self.daemon.poll() is None:
            raise RuntimeError("the stand-in schedd is still running; kill_daemon() first")
        self.daemon = self._start()

    def stop(self) -> None:
        """Shut the daemon down (it kills its jobs), or kill it if it does not go."""
        daemon = self.daemon
        if daemon is None or daemon.poll() is not None:
            return
        with contextlib.suppress(RuntimeError):
            StandinControl(self.control.socket_path, timeout=2.0).shutdown()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


def leftover_job_pids(workdir: str | os.PathLike[str]) -> list[int]:
    """Pids of live processes started by the stand-in under ``workdir``.

    Every job process (and any child that keeps its environment) carries
    ``_CONDOR_SCRATCH_DIR=<workdir>/execute/...``, so this finds exactly our processes.
    """
    marker = f"_CONDOR_SCRATCH_DIR={Path(workdir).absolute() / 'execute'}/".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and any(v.startswith(marker) for v in environ.split(b"\0")):
            pids.append(int(entry.name))
    return pids


def _kill_leftovers(workdir: Path, timeout: float = 5.0) -> None:
    """Safety net: SIGKILL job processes the daemon could not (e.g. it was SIGKILLed)."""
    deadline = time.monotonic() + timeout
    while pids := leftover_job_pids(workdir):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"stand-in job processes survived SIGKILL: {pids}")
        time.sleep(0.05)


def _package_root() -> tuple[str, Path]:
    """This package's dotted name and the sys.path entry it is importable from."""
    name = __name__.rpartition(".")[0]
    root = Path(__file__).resolve().parent
    for _ in name.split("."):
        root = root.parent
    return name, root


@contextlib.contextmanager
def start_standin(
    tmp_path: str | os.PathLike[str],
    slots: int = 4,
    start_latency: float = 0.0,
    tick: float = 1.0,
    kill_grace: float = 3.0,
    completed_linger: float = 0.0,
    client_timeout: float = 10.0,
    ready_timeout: float = 20.0,
    extra_args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> Iterator[Standin]:
    """Run a stand-in schedd daemon for the duration of a ``with`` block.

    The daemon, and every job it started, is stopped on exit even when the block raises;
    its log is ``<tmp_path>/standin/standin.log``.  The daemon also exits by itself if this
    process dies (``--exit-with-pid``). ``wrapper`` runs the daemon, and so its jobs, under
    a command such as ``ip netns exec <execute-node>`` (a host of its own on the network).
    """
    workdir = Path(tmp_path).absolute() / "standin"
    workdir.mkdir(parents=True, exist_ok=True)
    socket_dir: Path | None = None
    socket_path = workdir / "schedd.sock"
    if len(str(socket_path)) > _MAX_SOCKET_PATH:
        socket_dir = Path(tempfile.mkdtemp(prefix="standin-", dir="/tmp"))
        socket_path = socket_dir / "schedd.sock"
    package, root = _package_root()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    cmd = [
        *wrapper,
        sys.executable,
        "-m",
        f"{package}.daemon",
        "--socket",
        str(socket_path),
        "--workdir",
        str(workdir),
        "--slots",
        str(slots),
        "--start-latency",
        str(start_latency),
        "--tick",
        str(tick),
        "--kill-grace",
        str(kill_grace),
        "--completed-linger",
        str(completed_linger),
        "--exit-with-pid",
        str(os.getpid()),
        *extra_args,
    ]
    log_path = workdir / "standin.log"
    control = StandinControl(socket_path, workdir=workdir)
    # A new stand-in starts with an empty queue; restart() is the one that replays the log.
    shutil.rmtree(workdir / "spool", ignore_errors=True)

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log_file:
            daemon = subprocess.Popen(
                cmd, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + ready_timeout
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(
                    f"stand-in schedd exited with {daemon.returncode}:\n{log_path.read_text()}"
                )
            with contextlib.suppress(RuntimeError):
                control.ping()  # the socket of a killed daemon refuses: this is the new one
                return daemon
            if time.monotonic() > deadline:
                daemon.kill()
                daemon.wait(timeout=10)
                raise RuntimeError(f"stand-in schedd did not answer:\n{log_path.read_text()}")
            time.sleep(0.05)

    def client_factory(timeout: float | None = None) -> StandinSchedd:
        """A new client; ``timeout`` defaults to ``client_timeout``."""
        return StandinSchedd(socket_path, client_timeout if timeout is None else timeout)

    standin: Standin | None = None
    try:
        standin = Standin(client_factory, control, start)
        yield standin
    finally:
        if standin is not None:
            standin.stop()
        _kill_leftovers(workdir)
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
