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
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psutil
from traitlets import Bool, CaselessStrEnum, Float, Integer, List, Unicode, default

from ..commands import (
    CERT_FILE,
    KEY_FILE,
    scheduler_command,
    scheduler_env,
    worker_command,
    worker_env,
)
from ..pools import ConfigError
from .base import Launcher, WorkerCheck, WorkerPhase
from .forkserver import ForkServer
from .local_isolation import (
    DIRECTORY,
    SECRET_ENV,
    Account,
    UserRefused,
    check_work_directory_for_users,
    find_processes,
    private_subdir,
    read_tail,
    remove_below,
    resolve_account,
    write_private,
)


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
        With ``run_as = "user"`` it is made mode 0711 (users may pass through it
        to their clusters' directories but not list it), and every directory
        above it must let other users pass (mode o+x): keep it out of the
        gateway's state directory, which holds its secrets.
        """,
        config=True,
    )

    @default("work_directory")
    def _default_work_directory(self) -> str:
        return tempfile.mkdtemp(prefix="elastic-gateway-")

    run_as = CaselessStrEnum(
        ["gateway", "user"],
        "gateway",
        help="""
        Whose OS account runs a cluster's scheduler and workers.

        ``"user"``: the account named like the gateway user (exactly; names that
        are not plain account names, unknown accounts and system accounts are
        refused). The gateway must run as root. Each cluster's directory belongs
        to its user (mode 0700), so no user can read another's TLS keys, logs or
        spilled data, nor anything of the gateway.

        ``"gateway"``: the gateway's own account, shared by every user. Allowed
        only with ``single_user`` or ``allow_shared_local_user``.
        """,
        config=True,
    )

    single_user = Unicode(
        "",
        help="""
        With ``run_as = "gateway"``: the one gateway user whose clusters this
        launcher runs; other users' cluster requests are refused, saying so.
        ``elastic-gateway serve`` sets it to the OS user running the gateway
        (the one who can read its password).
        """,
        config=True,
    )

    allow_shared_local_user = Bool(
        False,
        help="""
        With ``run_as = "gateway"``: run *every* gateway user's clusters as the
        gateway's own OS account. This gives away user separation: any user's
        code (a task, a worker plugin) can read every other user's cluster TLS
        keys and logs and the gateway's own secrets (database key, proxy token,
        passwords) and state, and connect to their schedulers to read their data
        or run code in their clusters. Only for gateways whose users all trust
        each other and may act as the gateway's admin.
        """,
        config=True,
    )

    min_uid = Integer(
        1000,
        min=1,
        help="""
        With ``run_as = "user"``: lowest uid a cluster may run as. Users whose OS
        account has a lower uid (root, daemon and other system accounts) are refused.
        """,
        config=True,
    )

    inherited_environment = List(
        ["PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LANG", "LC_ALL", "HOME", "TMPDIR"],
        help="""
        Environment variables scheduler and worker processes inherit from the
        gateway. Names that look like credentials (``*TOKEN*``, ``*SECRET*``,
        ``*PASSW*``, ``*ENCRYPT*``, ``*_KEY(S)``, ``KRB5*``...) are refused at
        start-up: users' code can read its environment. With ``run_as = "user"``,
        ``HOME``, ``USER`` and ``LOGNAME`` are the user's.
        """,
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
        ``worker_cmd`` are the defaults. With ``run_as = "user"`` each user gets
        their own fork server, started as that user.
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
        self._check_config()
        os.makedirs(self.work_directory, mode=0o700, exist_ok=True)
        if self.run_as == "user":
            check_work_directory_for_users(self.work_directory)
        # Popen objects of processes this gateway process started, so they get reaped.
        self._children: dict[int, subprocess.Popen] = {}
        # Live processes found by their directories, not yet adopted (see _adoptable).
        self._found: dict[tuple[str, str | None], dict[str, Any]] | None = None
        self._user_servers: dict[str, ForkServer] = {}
        self._fork_server = None
        if self.fork_server and self.run_as == "gateway":
            self._fork_server = ForkServer(self._base_env())
            self._warm_up = asyncio.ensure_future(self._fork_server.start())

    def _check_config(self) -> None:
        secret = [n for n in self.inherited_environment if SECRET_ENV.search(n)]
        if secret:
            raise ConfigError(
                f"LocalLauncher.inherited_environment lists {secret}: these look like "
                "credentials of the gateway, and cluster processes run users' code, which "
                "can read its environment. Remove them; give clusters what they need with "
                "ElasticClusterConfig.environment"
            )
        if self.run_as == "user" and os.geteuid() != 0:
            raise ConfigError(
                "LocalLauncher.run_as = 'user' runs each cluster as its user's OS account, "
                f"which needs the gateway to run as root (it runs as uid {os.geteuid()}): "
                "start it as root or use LocalLauncher.run_as = 'gateway'"
            )
        if self.run_as == "gateway" and not (self.allow_shared_local_user or self.single_user):
            raise ConfigError(
                "LocalLauncher.run_as = 'gateway' runs every user's clusters as the gateway's "
                "own OS account, so any user's code could read other users' cluster keys and "
                "the gateway's secrets and connect to their schedulers. Set "
                "LocalLauncher.run_as = 'user' (an OS account per user; gateway as root), "
                "LocalLauncher.single_user = '<the one user>', or, accepting all of that, "
                "LocalLauncher.allow_shared_local_user = True"
            )

    async def cleanup(self) -> None:
        if self._fork_server is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
            await self._fork_server.close()
        for server in self._user_servers.values():
            await server.close()

    # -- who runs a cluster -----------------------------------------------------
    def check_cluster_request(self, username: str, options: Mapping[str, Any], config) -> None:
        """Refuse, when the cluster is requested, a user this launcher may not run."""
        self.account_for(username)

    def account_of(self, cluster) -> Account | None:
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
    def cluster_directory(self, cluster) -> str:
        return os.path.join(self.work_directory, cluster.name)

    def _tls_paths(self, cluster) -> tuple[str, str]:
        certs = os.path.join(self.cluster_directory(cluster), ".certs")
        return os.path.join(certs, CERT_FILE), os.path.join(certs, KEY_FILE)

    def _process_directory(self, cluster, log: str) -> str:
        """The marker directory of the process logging to ``log``."""
        if log.startswith("worker-"):
            return os.path.join(self.cluster_directory(cluster), "workers", log[len("worker-") :])
        return self.cluster_directory(cluster)

    def _prepare_cluster_directory(self, cluster, account: Account | None) -> None:
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
                if sub == ".certs":
                    write_private(sfd, CERT_FILE, cluster.tls_cert, uid, gid)
                    write_private(sfd, KEY_FILE, cluster.tls_key, uid, gid)
                os.close(sfd)
        finally:
            os.close(wfd)

    def _base_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.inherited_environment if k in os.environ}
        # `dask scheduler` / `dask worker` live next to the interpreter running us.
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
        return env

    def log_path(self, cluster, name: str) -> str:
        return os.path.join(self.cluster_directory(cluster), "logs", f"{name}.log")

    def _log_tail(self, cluster, name: str) -> str:
        """The end of a process's log; a link or another user's file there is not read."""
        try:
            account = self.account_of(cluster)
        except UserRefused:
            return ""
        owner = account.uid if account else os.geteuid()
        return read_tail(self.cluster_directory(cluster), "logs", f"{name}.log", owner)

    def _spawn(self, cluster, cmd: list[str], env: dict[str, str], name: str) -> dict:
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

    # -- finding processes by their directories -------------------------------------
    def _adoptable(self, cluster, worker: str | None, account: Account | None) -> dict | None:
        """A live process started for ``cluster``'s scheduler or ``worker`` but never
        recorded (the gateway died in between), to adopt instead of starting another."""
        if self._found is None:
            self._found = {
                (c, w): s for c, w, lead, s in find_processes(self.work_directory) if lead
            }
        state = self._found.pop((cluster.name, worker), None)
        if state is None or not _process_alive(state):
            return None
        if state.pop("uid") != (account.uid if account else os.geteuid()):
            return None
        self.log.info("Adopting running process %d of cluster %s", state["pid"], cluster.name)
        return {**state, "log": f"worker-{worker}" if worker else "scheduler"}

    # -- schedulers -------------------------------------------------------------
    async def start_scheduler(self, cluster) -> AsyncIterator[dict[str, Any]]:
        account = self.account_of(cluster)
        self._prepare_cluster_directory(cluster, account)
        yield {"workdir": self.cluster_directory(cluster)}
        state = self._adoptable(cluster, None, account)
        if state is None:
            cert_path, key_path = self._tls_paths(cluster)
            cmd = scheduler_command(
                cluster, host=self.host, heartbeat_period=self.backend.cluster_heartbeat_period
            )
            env = scheduler_env(
                cluster, api_url=self.backend.api_url, cert_path=cert_path, key_path=key_path
            )
            program = self._program(cluster.config.scheduler_cmd, "scheduler")
            if account is not None or program != "exec":
                [state] = await self._fork(cluster, account, program, [cmd], env, ["scheduler"])
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
                worker_command(cluster, w.name, cluster.scheduler_address, host=self.host)
                for w in new
            ]
            logs = [f"worker-{w.name}" for w in new]
            program = self._program(cluster.config.worker_cmd, "worker")
            if account is not None or program != "exec":
                states = await self._fork(cluster, account, program, commands, env, logs)
            else:
                pairs = zip(commands, logs, strict=True)
                states = [self._spawn(cluster, cmd, env, log) for cmd, log in pairs]
            adopted.update((w.name, s) for w, s in zip(new, states, strict=True))
        return [adopted[w.name] for w in workers]

    def _program(self, configured_cmd: Sequence[str], program: str) -> str:
        """Fork ``program`` from a fork server (only the default ``dask <program>``) or
        ``exec`` the configured command?"""
        return program if self.fork_server and list(configured_cmd) == ["dask", program] else "exec"

    async def _fork(self, cluster, account, program: str, cmds, env, logs) -> list[dict]:
        """Start one process per command through a fork server: the gateway's, or with
        ``account`` that user's own (which also runs custom commands, as ``exec``)."""
        full_env = {
            **self._base_env(),
            "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": self.nanny_start_method,
            **(account.env() if account else {}),
            **env,
        }
        requests = []
        for cmd, log in zip(cmds, logs, strict=True):
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
            try:
                proc = psutil.Process(pid)
                create_time = proc.create_time()
                if account is not None and proc.uids().real != account.uid:
                    raise RuntimeError(f"the fork server of {account.name} named pid {pid}")
            except psutil.Error:
                create_time = 0.0  # already gone: the status check reports its log
            states.append({"pid": pid, "create_time": create_time, "log": log})
        return states

    async def stop_workers(self, workers) -> None:
        await self._terminate([w.state for w in workers if "pid" in w.state])
        for w in workers:
            remove_below(self.cluster_directory(w.cluster), "workers", w.name)

    async def check_workers(self, workers) -> list[WorkerCheck]:
        self._reap()
        out = []
        for w in workers:
            if _process_alive(w.state):
                out.append(WorkerCheck(WorkerPhase.RUNNING))
                continue
            tail = self._log_tail(w.cluster, w.state.get("log", ""))
            last = tail.splitlines()[-1] if tail else "no output"
            out.append(WorkerCheck(WorkerPhase.FAILED, f"worker process exited: {last}"))
        return out

    async def remove_unknown(self, known_clusters: set[str], known_workers: set[str]) -> int:
        """Stop processes of clusters or workers the database no longer knows.

        Processes of known workers that were started but never recorded stay, to be
        adopted when the backend starts those workers again.
        """
        if not os.path.isdir(self.work_directory):
            return 0
        found = find_processes(self.work_directory)
        stray = [
            s
            for c, w, leader, s in found
            if c not in known_clusters or (leader and w is not None and w not in known_workers)
        ]
        if self._found is None:
            self._found = {
                (c, w): s
                for c, w, leader, s in found
                if leader and c in known_clusters and (w is None or w in known_workers)
            }
        if stray:
            self.log.warning("Stopping %d processes of clusters/workers with no record", len(stray))
            await self._terminate(stray)
        return len(stray)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
