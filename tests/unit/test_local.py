"""The local launcher without a gateway: restart adoption, user names, start-up refusals.

A "gateway crash" here is the real thing minus the database: one launcher starts
processes and is dropped before anything records them (exactly what a gateway killed
between the fork and its database write leaves behind), then a fresh launcher on the
same work directory does what a restarted backend does. Processes are real (the fork
server forking ``dask worker``), so are their directories and signals.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from dask_gateway_server.tls import new_keypair
from dask_gateway_server.utils import FrozenAttrDict

from gateway_backend.config import ConfigError
from gateway_backend.launchers import Check, ClusterFacts, Phase
from gateway_backend.launchers.local import LocalLauncher
from gateway_backend.launchers.local_isolation import UserRefused, resolve_account
from gateway_backend.launchers.local_processes import group_alive
from gateway_backend.launchers.staging import write_credentials
from tests.support_launchers import known, launcher_context

ME = getpass.getuser()
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
FACTS = ClusterFacts()


def make_cluster(
    scheduler_cmd=("dask", "scheduler"), username: str = ME, worker_cmd=("dask", "worker")
):
    name = uuid.uuid4().hex
    cert, key = new_keypair(f"daskgateway-{name}")
    config = FrozenAttrDict(
        {
            "scheduler_cmd": list(scheduler_cmd),
            "worker_cmd": list(worker_cmd),
            "worker_threads": 1,
            "worker_memory": 2**30,
            "environment": {},
            "adaptive_period": 3.0,
            "idle_timeout": 0.0,
        }
    )
    return SimpleNamespace(
        name=name,
        username=username,
        token="api-token",
        tls_cert=cert,
        tls_key=key,
        # Nothing listens there: workers keep trying to connect, and keep running.
        scheduler_address="tls://127.0.0.1:9",
        config=config,
        state={},
    )


def make_workers(cluster, n: int):
    return [SimpleNamespace(name=uuid.uuid4().hex, cluster=cluster, state={}) for _ in range(n)]


async def started_launcher(work: Path, scheduler_launcher=None, **settings) -> LocalLauncher:
    launcher = LocalLauncher(
        work_directory=str(work), single_user=ME, stop_grace_period=3, **settings
    )
    await launcher.setup(launcher_context(launcher, scheduler_launcher=scheduler_launcher))
    return launcher


def setup(launcher: LocalLauncher) -> None:
    asyncio.run(launcher.setup(launcher_context(launcher)))


def session_leaders_in(directory: Path) -> set[int]:
    """Processes started in ``directory`` or below (each a session leader), by pid."""
    root = str(directory)
    pids = set()
    for proc in psutil.process_iter(["pid", "cwd"]):
        cwd = proc.info.get("cwd") or ""
        if cwd.startswith(root + os.sep) and os.getsid(proc.info["pid"]) == proc.info["pid"]:
            pids.add(proc.info["pid"])
    return pids


async def until_in_directories(launcher: LocalLauncher, cluster, states) -> None:
    """Wait (bounded) until each started process has entered its marker directory."""
    want = {s["pid"]: launcher._process_directory(cluster, s["log"]) for s in states}
    for _ in range(200):
        try:
            if all(psutil.Process(pid).cwd() == d for pid, d in want.items()):
                return
        except psutil.Error:
            pass
        await asyncio.sleep(0.05)
    pytest.fail(f"processes {sorted(want)} never entered their directories")


def kill_all_in(directory: Path) -> None:
    procs = [psutil.Process(p) for p in session_leaders_in(directory)]
    for proc in procs:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def work(tmp_path: Path):
    work = tmp_path / "clusters"
    try:
        yield work
    finally:
        kill_all_in(work)


def test_workers_started_but_never_recorded_are_adopted_after_a_restart(work):
    async def scenario():
        cluster = make_cluster()
        workers = make_workers(cluster, 2)
        before = await started_launcher(work)
        lost = await before.start_workers(cluster, workers, FACTS)  # the gateway dies here
        await until_in_directories(before, cluster, lost)
        await before.cleanup()

        after = await started_launcher(work)
        try:
            records = known([cluster.name], [w.name for w in workers])  # status CREATED
            assert await after.remove_unknown(records) == 0
            # The restarted backend starts CREATED workers again: the launcher adopts them.
            states = await after.start_workers(cluster, workers, FACTS)
            assert [s["pid"] for s in states] == [s["pid"] for s in lost]
            assert session_leaders_in(work) == {s["pid"] for s in lost}  # no third process
            for w, state in zip(workers, states, strict=True):
                w.state = state
            checks = await after.check_workers(workers)
            assert [c.phase for c in checks] == [Phase.RUNNING] * 2
            await after.stop_workers(workers)
            assert session_leaders_in(work) == set()
        finally:
            await after.cleanup()

    asyncio.run(scenario())


def test_a_started_worker_whose_record_is_gone_is_removed_after_a_restart(work):
    async def scenario():
        cluster = make_cluster()
        kept, dropped = make_workers(cluster, 2)
        before = await started_launcher(work)
        lost = await before.start_workers(cluster, [kept, dropped], FACTS)
        await until_in_directories(before, cluster, lost)
        await before.cleanup()

        after = await started_launcher(work)
        try:
            assert await after.remove_unknown(known([cluster.name], [kept.name])) == 1
            assert session_leaders_in(work) == {lost[0]["pid"]}
            [state] = await after.start_workers(cluster, [kept], FACTS)
            assert state["pid"] == lost[0]["pid"]
            assert session_leaders_in(work) == {lost[0]["pid"]}
        finally:
            await after.cleanup()

    asyncio.run(scenario())


def test_a_scheduler_started_but_never_recorded_is_adopted_after_a_restart(work):
    async def scenario():
        cluster = make_cluster(scheduler_cmd=SLEEPER)  # a spawned, not forked, command
        before = await started_launcher(work)
        *_, lost = [state async for state in before.start_scheduler(cluster)]
        await until_in_directories(before, cluster, [lost])
        await before.cleanup()

        after = await started_launcher(work)
        try:
            assert await after.remove_unknown(known([cluster.name])) == 0
            *_, state = [s async for s in after.start_scheduler(cluster)]
            assert state["pid"] == lost["pid"]
            assert session_leaders_in(work) == {lost["pid"]}
            cluster.state = state
            assert [c.phase for c in await after.check_schedulers([cluster])] == [Phase.RUNNING]
        finally:
            await after.stop_scheduler(cluster)
            await after.cleanup()
        assert session_leaders_in(work) == set()

    asyncio.run(scenario())


def test_a_scheduler_that_exits_is_reported_with_its_exit_code_and_last_words(work):
    async def scenario():
        crash = [sys.executable, "-c", "import sys; print('no port for you'); sys.exit(3)"]
        cluster = make_cluster(scheduler_cmd=crash)  # spawned: its exit code is ours to read
        launcher = await started_launcher(work, fork_server=False)
        try:
            cluster.state = [s async for s in launcher.start_scheduler(cluster)][-1]
            for _ in range(200):
                [check] = await launcher.check_schedulers([cluster])
                if not check.alive:
                    break
                await asyncio.sleep(0.05)
            why = "the scheduler process exited with code 3; last log lines: no port for you"
            assert check == Check(Phase.FAILED, why)
        finally:
            await launcher.stop_scheduler(cluster)
            await launcher.cleanup()

    asyncio.run(scenario())


# The leader exits at once; the child it forked ignores SIGTERM and lingers 1.5 s.
LEADER_EXITS_FIRST = [
    sys.executable,
    "-c",
    "import os, signal, time\n"
    "if os.fork() == 0:\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1.5); os._exit(0)\n"
    "time.sleep(0.3); os._exit(1)",
]


def test_stopping_a_worker_whose_leader_exited_waits_for_the_rest_of_its_group(work):
    async def scenario():
        launcher = await started_launcher(work, fork_server=False)
        try:
            cluster = make_cluster(worker_cmd=LEADER_EXITS_FIRST)
            [worker] = make_workers(cluster, 1)
            [worker.state] = await launcher.start_workers(cluster, [worker], FACTS)
            for _ in range(100):  # bounded: until the leader has gone
                [check] = await launcher.check_workers([worker])
                if not check.alive:
                    break
                await asyncio.sleep(0.05)
            assert check.phase == Phase.FAILED
            assert group_alive(worker.state["pid"])  # its child still holds the resources
            await launcher.stop_workers([worker])
            assert not group_alive(worker.state["pid"])
        finally:
            await launcher.cleanup()

    asyncio.run(scenario())


def test_a_pool_of_its_own_removes_its_copy_of_the_cluster_files_at_cluster_stop(work):
    async def scenario():
        scheduler = await started_launcher(work / "schedulers", fork_server=False)
        # A pool that overrides settings: a launcher instance (and directory) of its own.
        pool = await started_launcher(work / "pool", scheduler, fork_server=False)
        try:
            cluster = make_cluster(worker_cmd=SLEEPER)
            workers = make_workers(cluster, 1)
            [workers[0].state] = await pool.start_workers(cluster, workers, FACTS)
            key = work / "pool" / cluster.name / ".certs" / "dask.pem"
            assert key.read_bytes() == cluster.tls_key
            await pool.stop_cluster_workers(cluster, workers)
            assert not key.parent.parent.exists()
            # Sharing the scheduler's instance, the files stay for stop_scheduler to remove.
            cluster = make_cluster(worker_cmd=SLEEPER)
            workers = make_workers(cluster, 1)
            [workers[0].state] = await scheduler.start_workers(cluster, workers, FACTS)
            await scheduler.stop_cluster_workers(cluster, workers)
            assert (work / "schedulers" / cluster.name / ".certs" / "dask.pem").exists()
            assert session_leaders_in(work) == set()
        finally:
            await pool.cleanup()
            await scheduler.cleanup()

    asyncio.run(scenario())


def test_credentials_are_new_private_files_even_where_a_link_was_planted(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not the gateway's to overwrite")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "dask.pem").symlink_to(elsewhere)
    cluster = make_cluster()
    fd = os.open(certs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_credentials(cluster, dir_fd=fd, owner=(os.geteuid(), os.getegid()))
    finally:
        os.close(fd)
    assert elsewhere.read_bytes() == b"not the gateway's to overwrite"
    key = certs / "dask.pem"
    assert not key.is_symlink() and key.read_bytes() == cluster.tls_key
    assert key.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in certs.iterdir()) == ["dask.crt", "dask.pem"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../alice", "cannot be an OS account name"),
        ("alice/../root", "cannot be an OS account name"),
        ("root\n", "cannot be an OS account name"),
        ("bob\nroot", "cannot be an OS account name"),
        ("-rf", "cannot be an OS account name"),
        ("", "cannot be an OS account name"),
        ("a" * 33, "cannot be an OS account name"),
        ("root", "is a system account (uid 0"),
        ("daemon", "is a system account"),
        ("nobody", "is a system account (uid 65534"),
        ("no_such_user_here", "has no OS account on the gateway's machine"),
    ],
)
def test_user_names_that_are_not_a_regular_account_are_refused(name, why):
    with pytest.raises(UserRefused) as err:
        resolve_account(name, min_uid=1000)
    assert why in str(err.value)
    assert "\n" not in str(err.value)  # the name is shown escaped, on one line


def test_shared_mode_without_a_single_user_or_the_switch_is_refused_at_start_up(tmp_path):
    launcher = LocalLauncher(work_directory=str(tmp_path))
    with pytest.raises(ConfigError, match=r"LocalLauncher\.allow_shared_local_user = True"):
        setup(launcher)


def test_shared_mode_for_a_single_user_refuses_other_users_cluster_requests(tmp_path):
    launcher = LocalLauncher(work_directory=str(tmp_path), single_user="alice", fork_server=False)
    setup(launcher)
    launcher.check_cluster_request("alice", {}, None, FACTS)
    with pytest.raises(ValueError, match=r"for its single user 'alice' only"):
        launcher.check_cluster_request("bob", {}, None, FACTS)


@pytest.mark.parametrize(
    "name", ["JUPYTERHUB_API_TOKEN", "DASK_GATEWAY_ENCRYPT_KEYS", "KRB5CCNAME"]
)
def test_credentials_in_inherited_environment_are_refused_at_start_up(tmp_path, name):
    launcher = LocalLauncher(
        work_directory=str(tmp_path), single_user=ME, inherited_environment=["PATH", name]
    )
    with pytest.raises(
        ConfigError, match=rf"LocalLauncher.inherited_environment lists \['{name}'\]"
    ):
        setup(launcher)


def test_per_user_mode_needs_a_root_gateway(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    launcher = LocalLauncher(work_directory=str(tmp_path), run_as="user")
    with pytest.raises(ConfigError, match=r"LocalLauncher.run_as = 'user' .* needs the gateway to"):
        setup(launcher)


@pytest.mark.skipif(os.geteuid() != 0, reason="run_as = 'user' needs root")
def test_per_user_work_directory_inside_a_closed_directory_is_refused_at_start_up(tmp_path):
    closed = tmp_path / "state"  # like the gateway's state directory, next to its secrets
    closed.mkdir(mode=0o700)
    launcher = LocalLauncher(work_directory=str(closed / "clusters"), run_as="user")
    with pytest.raises(ConfigError) as err:
        setup(launcher)
    assert f"LocalLauncher.work_directory {closed / 'clusters'} is inside {closed} (mode 0700)" in (
        str(err.value)
    )
