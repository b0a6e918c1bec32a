"""Schedulers and workers as processes on the gateway's own machine.

The embedded single-machine default, and what tests and demos run on. Each
cluster gets a private directory (mode 0700) holding its TLS files and logs.
Processes run in their own sessions so that a gateway crash leaves them
running; a restarted gateway finds them again by pid and start time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psutil
from traitlets import Bool, CaselessStrEnum, Float, List, Unicode, default

from ..commands import (
    CERT_FILE,
    KEY_FILE,
    scheduler_command,
    scheduler_env,
    worker_command,
    worker_env,
)
from .base import Launcher, WorkerCheck, WorkerPhase, log_tail
from .forkserver import ForkServer


def _process_alive(state: dict[str, Any]) -> bool:
    """True if the process recorded in ``state`` still runs (pid reuse is ruled out)."""
    pid = state.get("pid")
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - state.get("create_time", 0)) > 0.05:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class LocalLauncher(Launcher):
    """Runs schedulers and workers as subprocesses of the gateway's machine."""

    kind = "local"

    work_directory = Unicode(
        help="""
        Directory under which each cluster gets a private working directory
        (TLS files, logs). Defaults to a new temporary directory. Set it to a
        persistent path so that a restarted gateway can find its clusters' logs.
        """,
        config=True,
    )

    @default("work_directory")
    def _default_work_directory(self) -> str:
        return tempfile.mkdtemp(prefix="elastic-gateway-")

    inherited_environment = List(
        ["PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LANG", "LC_ALL", "HOME", "TMPDIR"],
        help="Environment variables scheduler and worker processes inherit from the gateway.",
        config=True,
    )

    stop_grace_period = Float(
        5.0,
        help="Seconds to wait after SIGTERM before a process is killed with SIGKILL.",
        config=True,
    )

    fork_server = Bool(
        True,
        help="""
        Start schedulers and workers by forking a process that has already
        imported distributed, instead of a new ``dask scheduler``/``dask worker``
        process each: cluster start and scale-up no longer pay an interpreter
        start and import per process. Used when the cluster's ``scheduler_cmd``/
        ``worker_cmd`` are the defaults.
        """,
        config=True,
    )

    nanny_start_method = CaselessStrEnum(
        ["fork", "spawn", "forkserver"],
        "fork",
        help="""
        ``distributed.worker.multiprocessing-method`` for workers started by the
        fork server: ``fork`` lets each nanny fork its worker (fast) instead of
        starting a new interpreter (``spawn``, distributed's default).
        """,
        config=True,
    )

    host = Unicode(
        "127.0.0.1",
        help="Address schedulers and workers listen on. Keep it on loopback unless "
        "workers on other machines must reach the scheduler directly.",
        config=True,
    )

    async def setup(self, backend) -> None:
        await super().setup(backend)
        os.makedirs(self.work_directory, mode=0o700, exist_ok=True)
        # Popen objects of processes this gateway process started, so they get reaped.
        self._children: dict[int, subprocess.Popen] = {}
        self._fork_server = ForkServer(self._base_env()) if self.fork_server else None
        if self._fork_server is not None:
            self._warm_up = asyncio.ensure_future(self._fork_server.start())

    async def cleanup(self) -> None:
        if self._fork_server is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
            await self._fork_server.close()

    # -- helpers ----------------------------------------------------------------
    def cluster_directory(self, cluster) -> str:
        return os.path.join(self.work_directory, cluster.name)

    def _tls_paths(self, cluster) -> tuple[str, str]:
        certs = os.path.join(self.cluster_directory(cluster), ".certs")
        return os.path.join(certs, CERT_FILE), os.path.join(certs, KEY_FILE)

    def _prepare_cluster_directory(self, cluster) -> None:
        workdir = self.cluster_directory(cluster)
        certs = os.path.join(workdir, ".certs")
        for path in (workdir, certs, os.path.join(workdir, "logs")):
            os.makedirs(path, mode=0o700, exist_ok=True)
        cert_path, key_path = self._tls_paths(cluster)
        for path, data in ((cert_path, cluster.tls_cert), (key_path, cluster.tls_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)

    def _base_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.inherited_environment if k in os.environ}
        # `dask scheduler` / `dask worker` live next to the interpreter running us.
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
        return env

    def log_path(self, cluster, name: str) -> str:
        return os.path.join(self.cluster_directory(cluster), "logs", f"{name}.log")

    def _spawn(self, cluster, cmd: list[str], env: dict[str, str], name: str) -> dict:
        full_env = self._base_env()
        full_env.update(env)
        with open(self.log_path(cluster, name), "ab") as log:
            proc = subprocess.Popen(
                cmd,
                env=full_env,
                cwd=self.cluster_directory(cluster),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        create_time = psutil.Process(proc.pid).create_time()
        return {"pid": proc.pid, "create_time": create_time, "log": name}

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    async def _terminate(self, states: Sequence[dict[str, Any]]) -> None:
        """SIGTERM a set of process groups, then SIGKILL whatever outlives the grace period."""
        alive = [s for s in states if _process_alive(s)]
        for state in alive:
            _signal_group(state["pid"], signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + self.stop_grace_period
        while alive and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            self._reap()
            alive = [s for s in alive if _process_alive(s)]
        for state in alive:
            self.log.warning("Process %d ignored SIGTERM, killing it", state["pid"])
            _signal_group(state["pid"], signal.SIGKILL)
        await asyncio.sleep(0)
        self._reap()

    # -- schedulers -------------------------------------------------------------
    async def start_scheduler(self, cluster) -> AsyncIterator[dict[str, Any]]:
        self._prepare_cluster_directory(cluster)
        yield {"workdir": self.cluster_directory(cluster)}
        cert_path, key_path = self._tls_paths(cluster)
        cmd = scheduler_command(
            cluster, host=self.host, heartbeat_period=self.backend.cluster_heartbeat_period
        )
        env = scheduler_env(
            cluster, api_url=self.backend.api_url, cert_path=cert_path, key_path=key_path
        )
        if self._forks(cluster.config.scheduler_cmd, "scheduler"):
            [state] = await self._fork(cluster, "scheduler", [cmd[2:]], env, ["scheduler"])
        else:
            state = self._spawn(cluster, cmd, env, "scheduler")
        yield {"workdir": self.cluster_directory(cluster), **state}

    async def stop_scheduler(self, cluster) -> None:
        if "pid" in cluster.state:
            await self._terminate([cluster.state])
        shutil.rmtree(self.cluster_directory(cluster), ignore_errors=True)

    async def check_schedulers(self, clusters) -> list[bool]:
        self._reap()
        return [_process_alive(c.state) for c in clusters]

    # -- workers ----------------------------------------------------------------
    async def start_workers(self, cluster, workers) -> list[dict[str, Any]]:
        if not os.path.isdir(self.cluster_directory(cluster)):
            # The scheduler runs elsewhere (e.g. in Kubernetes): these workers need the files.
            self._prepare_cluster_directory(cluster)
        cert_path, key_path = self._tls_paths(cluster)
        env = worker_env(cluster, cert_path=cert_path, key_path=key_path)
        commands = [
            worker_command(cluster, w.name, cluster.scheduler_address, host=self.host)
            for w in workers
        ]
        if self._forks(cluster.config.worker_cmd, "worker"):
            argvs = [cmd[2:] for cmd in commands]  # the arguments after `dask worker`
            logs = [f"worker-{w.name}" for w in workers]
            return await self._fork(cluster, "worker", argvs, env, logs)
        return [
            self._spawn(cluster, cmd, env, f"worker-{w.name}")
            for w, cmd in zip(workers, commands, strict=True)
        ]

    def _forks(self, configured_cmd: Sequence[str], program: str) -> bool:
        """Fork ``program`` from the fork server? Only for the default ``dask <program>``."""
        return self._fork_server is not None and list(configured_cmd) == ["dask", program]

    async def _fork(self, cluster, program: str, argvs, env, logs: list[str]) -> list[dict]:
        """Start processes of ``program`` through the fork server, one per argv."""
        full_env = {
            **self._base_env(),
            "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": self.nanny_start_method,
            **env,
        }
        requests = [
            {
                "program": program,
                "argv": argv,
                "env": full_env,
                "cwd": self.cluster_directory(cluster),
                "log": self.log_path(cluster, log),
            }
            for argv, log in zip(argvs, logs, strict=True)
        ]
        pids = await self._fork_server.spawn_many(requests)
        states = []
        for pid, log in zip(pids, logs, strict=True):
            try:
                create_time = psutil.Process(pid).create_time()
            except psutil.Error:
                create_time = 0.0  # already gone: the status check reports its log
            states.append({"pid": pid, "create_time": create_time, "log": log})
        return states

    async def stop_workers(self, workers) -> None:
        await self._terminate([w.state for w in workers if "pid" in w.state])

    async def check_workers(self, workers) -> list[WorkerCheck]:
        self._reap()
        out = []
        for w in workers:
            if _process_alive(w.state):
                out.append(WorkerCheck(WorkerPhase.RUNNING))
                continue
            tail = log_tail(self.log_path(w.cluster, w.state.get("log", "")))
            last = tail.splitlines()[-1] if tail else "no output"
            out.append(WorkerCheck(WorkerPhase.FAILED, f"worker process exited: {last}"))
        return out

    async def remove_unknown(self, known_clusters: set[str], known_workers: set[str]) -> int:
        """Stop processes left in cluster directories the database no longer knows."""
        if not os.path.isdir(self.work_directory):
            return 0
        stray = []
        for proc in psutil.process_iter(["pid", "cwd", "create_time"]):
            cwd = proc.info.get("cwd") or ""
            if os.path.dirname(cwd) != os.path.abspath(self.work_directory):
                continue
            if os.path.basename(cwd) not in known_clusters:
                stray.append({"pid": proc.info["pid"], "create_time": proc.info["create_time"]})
        if stray:
            self.log.warning("Stopping %d processes of clusters with no record", len(stray))
            await self._terminate(stray)
        return len(stray)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
