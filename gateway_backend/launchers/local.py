"""Schedulers and workers as processes on the gateway's own machine.

The embedded single-machine default, and what tests and demos run on. Each
cluster gets a private directory (mode 0700) holding its TLS files and logs.
Processes run in their own sessions so that a gateway crash leaves them
running; a restarted gateway finds them again by pid and start time, and those
it never got to record by their working directory (``<cluster>`` for the
scheduler, ``<cluster>/workers/<worker>`` for a worker), which every process
enters before it does anything else.

Whose OS account runs them is ``run_as``: each user's own (the gateway is
root) or the gateway's, which every user then shares, so the latter is only
allowed for one declared user or when the admin accepts the sharing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psutil

from ..commands import (
    CERT_FILE,
    KEY_FILE,
    scheduler_command,
    scheduler_env,
    worker_command,
    worker_env,
)
from .base import Check, ClusterFacts, KnownRecords, Launcher, LauncherContext, Phase
from .exit_reasons import with_log
from .forkserver import ForkServer
from .local_gpus import GpuAllocator, discover_gpus
from .local_isolation import (
    DIRECTORY,
    Account,
    UserRefused,
    check_work_directory_for_users,
    find_processes,
    private_subdir,
    remove_below,
    resolve_account,
)
from .local_logs import LocalLogs
from .local_processes import group_alive, process_alive, signal_group
from .local_settings import LocalSettings
from .staging import write_credentials

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker


# Variables the fork server's preloaded libraries read when imported: a cluster setting
# them needs a fresh interpreter (e.g. a site CA for aiohttp, fsspec, uproot over https).
IMPORT_TIME_VARIABLES = frozenset({"SSL_CERT_FILE", "SSL_CERT_DIR"})


class LocalLauncher(LocalSettings, LocalLogs, Launcher):
    """Runs schedulers and workers as subprocesses of the gateway's machine."""

    kind = "local"

    async def setup(self, context: LauncherContext) -> None:
        await super().setup(context)
        self._check_settings()
        os.makedirs(self.work_directory, mode=0o700, exist_ok=True)
        if self.run_as == "user":
            check_work_directory_for_users(self.work_directory)
        # Popen objects of processes this gateway process started, so they get reaped,
        # and the exit codes of those reaped since, for the reason a check reports.
        self._children: dict[int, subprocess.Popen] = {}
        self._exit_codes: dict[int, int] = {}
        # Live processes found by their directories, not yet adopted (see _adoptable).
        self._found: dict[tuple[str, str | None], dict[str, Any]] | None = None
        self._user_servers: dict[str, ForkServer] = {}
        self._gpu_allocator: GpuAllocator | None = None  # made when a GPU cluster asks
        self._fork_server = None
        if self.fork_server and self.run_as == "gateway":
            self._fork_server = ForkServer(self._base_env())
            self._warm_up = asyncio.ensure_future(self._fork_server.start())

    async def cleanup(self) -> None:
        if self._fork_server is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
            await self._fork_server.close()
        for server in self._user_servers.values():
            await server.close()

    # -- who runs a cluster -----------------------------------------------------
    def check_cluster_request(
        self, username: str, options: Mapping[str, Any], config: Any, facts: ClusterFacts
    ) -> None:
        """Refuse, when the cluster is requested, a user this launcher may not run."""
        self.account_for(username)

    def account_of(self, cluster: Cluster) -> Account | None:
        """The OS account for ``cluster`` (None: the gateway's), or ``UserRefused``."""
        return self.account_for(cluster.username)

    def account_for(self, username: str) -> Account | None:
        """The OS account for ``username``'s clusters (None: the gateway's), or ``UserRefused``.

        Checked again at every start: the request check does not run for a
        scheduler-only launcher, nor for clusters created before a config change.
        """
        if self.run_as == "user":
            return resolve_account(username, self.min_uid)
        if not self.allow_shared_local_user and username != self.single_user:
            raise UserRefused(
                f"user {username!r:.80} may not run clusters here: this gateway runs "
                f"clusters as its own OS account for its single user {self.single_user!r} "
                "only (LocalLauncher.single_user); admins can give each user their own "
                "account with LocalLauncher.run_as = 'user'"
            )
        return None

    def _user_server(self, account: Account) -> ForkServer:
        server = self._user_servers.get(account.name)
        if server is None:
            env = {**self._base_env(), **account.env()}
            user = {"uid": account.uid, "gid": account.gid, "groups": account.groups}
            server = ForkServer(env, user=user, preload=self.fork_server, log=self.log)
            self._user_servers[account.name] = server
        return server

    # -- directories --------------------------------------------------------------
    def cluster_directory(self, cluster: Cluster) -> str:
        return os.path.join(self.work_directory, cluster.name)

    def _tls_paths(self, cluster: Cluster) -> tuple[str, str]:
        certs = os.path.join(self.cluster_directory(cluster), ".certs")
        return os.path.join(certs, CERT_FILE), os.path.join(certs, KEY_FILE)

    def _process_directory(self, cluster: Cluster, log: str) -> str:
        """The marker directory of the process logging to ``log``."""
        if log.startswith("worker-"):
            return os.path.join(self.cluster_directory(cluster), "workers", log[len("worker-") :])
        return self.cluster_directory(cluster)

    def _prepare_cluster_directory(self, cluster: Cluster, account: Account | None) -> None:
        """Make the cluster's directory, owned by ``account``, without following links.

        With ``run_as = "user"`` the directory may already be its user's (workers of a
        scheduler that runs elsewhere): everything below it is opened relative to a
        descriptor, never following a link the user may have planted.
        """
        workdir = self.cluster_directory(cluster)
        uid, gid = (account.uid, account.gid) if account else (os.geteuid(), os.getegid())
        try:
            os.mkdir(workdir, 0o700)
        except FileExistsError:
            pass
        wfd = os.open(workdir, DIRECTORY)
        try:
            if os.fstat(wfd).st_uid not in (uid, os.geteuid()):
                raise RuntimeError(f"{workdir} belongs to another user")
            os.fchown(wfd, uid, gid)
            os.fchmod(wfd, 0o700)
            for sub in ("logs", "workers", ".certs"):
                sfd = private_subdir(wfd, sub, uid, gid)
                try:
                    if sub == ".certs":
                        write_credentials(cluster, dir_fd=sfd, owner=(uid, gid))
                finally:
                    os.close(sfd)
        finally:
            os.close(wfd)

    def _base_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.inherited_environment if k in os.environ}
        # `dask scheduler` / `dask worker` live next to the interpreter running us.
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
        return env

    def _in_environment(self, cluster: Cluster, cmd: list[str], env: dict[str, str]):
        """Command and environment in the cluster's Python environment (its profile's).

        ``dask <subcommand>`` becomes ``<python> -m dask <subcommand>``, so the
        scheduler and workers run that interpreter whatever ``PATH`` holds, and its
        ``bin`` directory leads ``PATH`` (as activating the environment would).
        """
        python = cluster.config.get("python")
        if not python:
            return cmd, env
        if cmd[:1] == ["dask"]:
            cmd = [python, "-m", "dask", *cmd[1:]]
        bindir = os.path.dirname(python)
        path = env.get("PATH") or self._base_env().get("PATH", "")
        return cmd, {**env, "PATH": os.pathsep.join(p for p in (bindir, path) if p)}

    @property
    def gpus(self) -> GpuAllocator:
        if self._gpu_allocator is None:
            devices = self.gpu_devices if self.gpu_devices is not None else discover_gpus()
            self._gpu_allocator = GpuAllocator(devices)
        return self._gpu_allocator

    def log_path(self, cluster: Cluster, name: str) -> str:
        return os.path.join(self.cluster_directory(cluster), "logs", f"{name}.log")

    def _spawn(self, cluster: Cluster, cmd: list[str], env: dict[str, str], name: str) -> dict:
        full_env = self._base_env()
        full_env.update(env)
        cwd = self._process_directory(cluster, name)
        os.makedirs(cwd, mode=0o700, exist_ok=True)
        with open(self.log_path(cluster, name), "ab") as log:
            proc = subprocess.Popen(
                cmd,
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        self._exit_codes.pop(proc.pid, None)  # a code of an earlier process with this pid
        create_time = psutil.Process(proc.pid).create_time()
        return {"pid": proc.pid, "create_time": create_time, "log": name}

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._exit_codes[pid] = proc.returncode
                del self._children[pid]

    async def _terminate(self, states: Sequence[dict[str, Any]]) -> None:
        """SIGTERM a set of process groups, then SIGKILL whatever outlives the grace period.

        A group whose leader has already exited (a Nanny gone before its forked
        worker) is still waited for: its resources are free only when all of it is.
        """
        alive = [s for s in states if process_alive(s) or group_alive(s["pid"])]
        for state in alive:
            signal_group(state["pid"], signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + self.stop_grace_period
        while alive and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            self._reap()
            # Stopped once every process of the group has: only then are its resources free.
            alive = [s for s in alive if process_alive(s) or group_alive(s["pid"])]
        for state in alive:
            self.log.warning("Process %d ignored SIGTERM, killing it", state["pid"])
            signal_group(state["pid"], signal.SIGKILL)
        await asyncio.sleep(0)
        self._reap()

    # -- finding processes by their directories -------------------------------------
    def _adoptable(
        self, cluster: Cluster, worker: str | None, account: Account | None
    ) -> dict | None:
        """A live process started for ``cluster``'s scheduler or ``worker`` but never
        recorded (the gateway died in between), to adopt instead of starting another."""
        if self._found is None:
            self._found = {
                (c, w): s for c, w, lead, s in find_processes(self.work_directory) if lead
            }
        state = self._found.pop((cluster.name, worker), None)
        if state is None or not process_alive(state):
            return None
        if state.pop("uid") != (account.uid if account else os.geteuid()):
            return None
        self.log.info("Adopting running process %d of cluster %s", state["pid"], cluster.name)
        return {**state, "log": f"worker-{worker}" if worker else "scheduler"}

    # -- schedulers -------------------------------------------------------------
    async def start_scheduler(self, cluster: Cluster) -> AsyncIterator[dict[str, Any]]:
        account = self.account_of(cluster)
        self._prepare_cluster_directory(cluster, account)
        yield {"workdir": self.cluster_directory(cluster)}
        state = self._adoptable(cluster, None, account)
        if state is None:
            cert_path, key_path = self._tls_paths(cluster)
            cmd = scheduler_command(
                cluster, host=self.host, heartbeat_period=self.context.heartbeat_period
            )
            env = scheduler_env(
                cluster, api_url=self.context.api_url, cert_path=cert_path, key_path=key_path
            )
            cmd, env = self._in_environment(cluster, cmd, env)
            program = self._program(cluster, cluster.config.scheduler_cmd, "scheduler")
            if account is not None or program != "exec":
                [state] = await self._fork(cluster, account, program, [cmd], env, ["scheduler"])
            else:
                state = self._spawn(cluster, cmd, env, "scheduler")
        yield {"workdir": self.cluster_directory(cluster), **state}

    async def stop_scheduler(self, cluster: Cluster) -> None:
        if "pid" in cluster.state:
            await self._terminate([cluster.state])
            self._exit_codes.pop(cluster.state["pid"], None)
        shutil.rmtree(self.cluster_directory(cluster), ignore_errors=True)

    async def check_schedulers(self, clusters: Sequence[Cluster]) -> list[Check]:
        self._reap()
        return [self._check_scheduler(c) for c in clusters]

    def _check_scheduler(self, cluster: Cluster) -> Check:
        state = cluster.state
        if process_alive(state):
            return Check(Phase.RUNNING)
        if "pid" not in state:
            return Check(Phase.FAILED, "no scheduler process was recorded")
        why = f"the scheduler process {self.ended(cluster, state)}"
        return Check(Phase.FAILED, with_log(why, self.log_tail(cluster, state)))

    # -- workers ----------------------------------------------------------------
    async def start_workers(
        self, cluster: Cluster, workers: Sequence[Worker], facts: ClusterFacts
    ) -> list[dict[str, Any]]:
        account = self.account_of(cluster)
        if not os.path.isdir(self.cluster_directory(cluster)):
            # The scheduler runs elsewhere (e.g. in Kubernetes): these workers need the files.
            self._prepare_cluster_directory(cluster, account)
        adopted = {w.name: self._adoptable(cluster, w.name, account) for w in workers}
        new = [w for w in workers if adopted[w.name] is None]
        if new:
            cert_path, key_path = self._tls_paths(cluster)
            env = worker_env(cluster, cert_path=cert_path, key_path=key_path)
            commands = [
                self._in_environment(
                    cluster,
                    worker_command(cluster, w.name, cluster.scheduler_address, host=self.host),
                    env,
                )[0]
                for w in new
            ]
            env = self._in_environment(cluster, [], env)[1]
            logs = [f"worker-{w.name}" for w in new]
            per_worker = int(cluster.config.get("worker_gpus", 0) or 0)
            devices = self.gpus.take([w.name for w in new], per_worker) if (per_worker) else {}
            envs = [
                {**env, "CUDA_VISIBLE_DEVICES": ",".join(devices[w.name])} if devices else env
                for w in new
            ]
            program = self._program(cluster, cluster.config.worker_cmd, "worker")
            try:
                if account is not None or program != "exec":
                    states = await self._fork(cluster, account, program, commands, envs, logs)
                else:
                    triples = zip(commands, envs, logs, strict=True)
                    states = [self._spawn(cluster, cmd, e, log) for cmd, e, log in triples]
            except BaseException:
                self.gpus.release(devices)
                raise
            for w, state in zip(new, states, strict=True):
                if devices:
                    state["gpus"] = devices[w.name]
            adopted.update((w.name, s) for w, s in zip(new, states, strict=True))
        return [adopted[w.name] for w in workers]

    def _program(self, cluster: Cluster, configured_cmd: Sequence[str], program: str) -> str:
        """Fork ``program`` from a fork server (only the default ``dask <program>`` in the
        gateway's own Python) or ``exec`` the command?"""
        default = list(configured_cmd) == ["dask", program] and not cluster.config.get("python")
        # Libraries the fork server imported already read these (aiohttp's TLS trust).
        read_at_import = IMPORT_TIME_VARIABLES & set(cluster.config.get("environment") or {})
        return program if self.fork_server and default and not read_at_import else "exec"

    async def _fork(self, cluster, account, program: str, cmds, env, logs) -> list[dict]:
        """Start one process per command through a fork server: the gateway's, or with
        ``account`` that user's own (which also runs custom commands, as ``exec``).
        ``env`` is one environment for all, or a list of one per command."""
        envs = env if isinstance(env, list) else [env] * len(cmds)
        requests = []
        for cmd, log, own_env in zip(cmds, logs, envs, strict=True):
            full_env = {
                **self._base_env(),
                "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": self.nanny_start_method,
                **(account.env() if account else {}),
                **own_env,
            }
            cwd = self._process_directory(cluster, log)
            # Spilled data stays in the user's private directory, not a shared /tmp.
            extra = {"DASK_TEMPORARY_DIRECTORY": cwd} if account else {}
            requests.append(
                {
                    "program": program,
                    "argv": cmd if program == "exec" else cmd[2:],  # after `dask worker`
                    "env": {**full_env, **extra},
                    "cwd": cwd,
                    "log": self.log_path(cluster, log),
                }
            )
        server = self._fork_server if account is None else self._user_server(account)
        pids = await server.spawn_many(requests)
        states = []
        for pid, log in zip(pids, logs, strict=True):
            self._exit_codes.pop(pid, None)  # a code of an earlier process with this pid
            try:
                proc = psutil.Process(pid)
                create_time = proc.create_time()
                if account is not None and proc.uids().real != account.uid:
                    raise RuntimeError(f"the fork server of {account.name} named pid {pid}")
            except psutil.Error:
                create_time = 0.0  # already gone: the status check reports its log
            states.append({"pid": pid, "create_time": create_time, "log": log})
        return states

    async def stop_workers(self, workers: Sequence[Worker]) -> None:
        await self._terminate([w.state for w in workers if "pid" in w.state])
        if self._gpu_allocator is not None:
            self._gpu_allocator.release(w.name for w in workers)
        for w in workers:
            self._exit_codes.pop(w.state.get("pid"), None)
            remove_below(self.cluster_directory(w.cluster), "workers", w.name)

    async def stop_cluster_workers(self, cluster: Cluster, workers: Sequence[Worker]) -> None:
        """Stop the workers, and remove the cluster's directory if no scheduler of ours uses it.

        Workers of a scheduler that runs elsewhere (in Kubernetes, or on another
        local launcher with its own ``work_directory``) got the cluster's TLS files
        in a directory of this launcher: they must not outlive the cluster.
        """
        await self.stop_workers(workers)
        scheduler = self.context.scheduler_launcher
        shared = isinstance(scheduler, LocalLauncher) and (
            scheduler.cluster_directory(cluster) == self.cluster_directory(cluster)
        )
        if not shared:
            shutil.rmtree(self.cluster_directory(cluster), ignore_errors=True)

    async def check_workers(self, workers: Sequence[Worker]) -> list[Check]:
        self._reap()
        out = []
        for w in workers:
            if process_alive(w.state):
                if w.state.get("gpus"):
                    self.gpus.remember(w.name, w.state)
                out.append(Check(Phase.RUNNING))
                continue
            if self._gpu_allocator is not None:
                self._gpu_allocator.release([w.name])
            why = f"the worker process {self.ended(w.cluster, w.state)}"
            out.append(Check(Phase.FAILED, with_log(why, self.log_tail(w.cluster, w.state))))
        return out

    async def count_unknown(self, known: KnownRecords) -> int:
        """Scheduler and worker processes (group leaders) of clusters not in ``known``."""
        if not os.path.isdir(self.work_directory):
            return 0
        found = await asyncio.to_thread(find_processes, self.work_directory)
        return sum(1 for c, _w, leader, _s in found if leader and c not in known.clusters)

    async def remove_unknown(self, known: KnownRecords) -> int:
        """Stop processes of clusters or workers without a record in ``known``.

        Processes of known workers that were started but never recorded stay, to be
        adopted when the backend starts those workers again.
        """
        if not os.path.isdir(self.work_directory):
            return 0
        found = find_processes(self.work_directory)
        stray = [
            s
            for c, w, leader, s in found
            if c not in known.clusters or (leader and w is not None and w not in known.workers)
        ]
        if self._found is None:
            self._found = {
                (c, w): s
                for c, w, leader, s in found
                if leader and c in known.clusters and (w is None or w in known.workers)
            }
        if stray:
            self.log.warning(
                "Stopping %d processes of clusters/workers with no record (%s)",
                len(stray),
                self.context.name or self.kind,
            )
            await self._terminate(stray)
        return len(stray)
