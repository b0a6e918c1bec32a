"""Users kept apart by the local launcher, end to end: real gateway, proxy, OS accounts.

With ``LocalLauncher.run_as = "user"`` two real OS accounts, created here, run
clusters side by side; one's task tries everything that worked when every cluster
ran as the gateway's account. The shared mode is refused unless declared.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gateway_backend.embedded import GatewayProcess, processes_in

from ..conftest import Gateways, http, wait_for, workers_of

pytestmark = pytest.mark.e2e

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd"),
    reason="running clusters as other OS users needs root and useradd (creates test accounts)",
)


class Isolation:
    """Two OS accounts and a work directory they can reach; all removed afterwards."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="eg-isolation-"))
        os.chmod(self.base, 0o711)
        self.work = self.base / "work"
        tag = f"{os.getpid() % 100000}"
        self.alice, self.bob = f"egalice{tag}", f"egbob{tag}"
        self.created: list[str] = []
        self.acls: list[tuple[str, int, bytes | None]] = []

    def create_users(self) -> None:
        (self.base / "home").mkdir(mode=0o755)
        for name in (self.alice, self.bob):
            home = self.base / "home" / name
            cmd = ["useradd", "--create-home", "--home-dir", str(home), "--user-group", name]
            subprocess.run([*cmd, "--shell", "/usr/sbin/nologin"], check=True)
            self.created.append(name)
        self._let_users_reach_python()

    def uid(self, name: str) -> int:
        return pwd.getpwnam(name).pw_uid

    def _let_users_reach_python(self) -> None:
        """Grant the test accounts passage (x) to the interpreter and this checkout.

        At a facility the Python environment lives where users can read it; here it
        may sit under /root (mode 0700). A POSIX ACL entry per test account, removed
        afterwards, opens exactly that and nothing else.
        """
        needed = {os.path.realpath(sys.executable), sys.prefix, sys.base_prefix}
        needed.add(str(Path(__file__).resolve().parents[2]))
        closed = set()
        for path in needed:
            for parent in Path(os.path.realpath(path)).parents:
                if not os.stat(parent).st_mode & stat.S_IXOTH:
                    closed.add(str(parent))
        uids = [self.uid(n) for n in self.created]
        for directory in sorted(closed):
            mode = stat.S_IMODE(os.stat(directory).st_mode)
            try:
                old = os.getxattr(directory, "system.posix_acl_access")
            except OSError:
                old = None
            try:
                os.setxattr(directory, "system.posix_acl_access", _acl(mode, uids))
            except OSError as exc:
                pytest.skip(f"{directory} is closed to other users and takes no ACL: {exc}")
            self.acls.append((directory, mode, old))

    def cleanup(self) -> list[str]:
        """Kill what still runs in the work directory, remove accounts, ACLs and files."""
        leaks = []
        procs = processes_in(self.work.resolve()) if self.work.exists() else []
        if procs:
            leaks.append(f"{len(procs)} processes left in {self.work}")
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        for directory, mode, old in reversed(self.acls):
            if old is None:
                os.removexattr(directory, "system.posix_acl_access")
            else:
                os.setxattr(directory, "system.posix_acl_access", old)
            os.chmod(directory, mode)
        for name in self.created:
            for proc in psutil.process_iter(["uids"]):
                if proc.info["uids"] and proc.info["uids"].real == self.uid(name):
                    leaks.append(f"process {proc.pid} of {name} still running")
                    proc.kill()
            subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        return leaks


def _acl(mode: int, uids: list[int]) -> bytes:
    """A POSIX access ACL (the kernel's xattr format) keeping ``mode``, plus x for ``uids``."""
    user_obj, user, group_obj, mask, other, undefined = 1, 2, 4, 0x10, 0x20, 0xFFFFFFFF
    entries = [(user_obj, mode >> 6 & 7, undefined)]
    entries += [(user, 1, uid) for uid in sorted(uids)]
    entries += [(group_obj, mode >> 3 & 7, undefined), (mask, mode >> 3 & 7 | 1, undefined)]
    entries += [(other, mode & 7, undefined)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.fixture
def isolation() -> Iterator[Isolation]:
    iso = Isolation()
    try:
        iso.create_users()
        yield iso
    finally:
        leaks = iso.cleanup()
    assert not leaks, "; ".join(leaks)


@pytest.fixture
def per_user_gateway(isolation: Isolation, gateways: Gateways) -> GatewayProcess:
    # ``gateways`` is set up after (so torn down before) ``isolation``.
    return gateways.start(
        'c.LocalLauncher.run_as = "user"\n'
        f"c.LocalLauncher.work_directory = {str(isolation.work)!r}\n"
    )


def bob_probe():
    """Bob's task, as a local function: his worker cannot import this module, so the
    code itself travels. It tries everything that worked when all clusters shared one
    OS account."""

    def probe(work: str, alice_cluster: str, alice_pid: int, state_dir: str, schedulers):
        import os
        import socket
        import ssl

        def attempt(action) -> str:
            try:
                action()
                return "allowed"
            except Exception as exc:
                return type(exc).__name__

        cert = os.environ["DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT"]
        key = os.environ["DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"]

        def connect(address: str) -> None:
            """TLS to a scheduler with bob's own certificate: one that accepts it sends its
            Dask handshake, one that refuses it ends the TLS session with an alert."""
            host, port = address.removeprefix("tls://").rsplit(":", 1)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(cert, key)
            with socket.create_connection((host, int(port)), timeout=3) as raw:
                with ctx.wrap_socket(raw) as tls:
                    if tls.recv(1) == b"":
                        raise ConnectionResetError("closed by the scheduler")

        alice = os.path.join(work, alice_cluster)
        return {
            "uid": os.getuid(),
            "home": os.environ["HOME"],
            "own key": attempt(lambda: open(key).read()),
            "alice's key": attempt(lambda: open(os.path.join(alice, ".certs", "dask.pem")).read()),
            "alice's directory": attempt(lambda: os.listdir(alice)),
            "alice's scheduler log": attempt(
                lambda: open(os.path.join(alice, "logs", "scheduler.log"))
            ),
            "alice's scheduler environment": attempt(
                lambda: open(f"/proc/{alice_pid}/environ").read()
            ),
            "work directory listing": attempt(lambda: os.listdir(work)),
            "gateway secrets": attempt(
                lambda: open(os.path.join(state_dir, "secrets.json")).read()
            ),
            "gateway database": attempt(
                lambda: open(os.path.join(state_dir, "gateway.sqlite"), "rb")
            ),
            "gateway's inherited environment": sorted(
                k for k in os.environ if "TOKEN" in k or "PASSWORD" in k
            ),
            "own scheduler": attempt(lambda: connect(schedulers["own"])),
            "alice's scheduler": attempt(lambda: connect(schedulers["alice"])),
        }

    return probe


@needs_root
def test_per_user_clusters_run_as_their_users_and_cannot_read_each_other(
    isolation, per_user_gateway, gateways
):
    gateway, work = per_user_gateway, isolation.work
    alice_gw = gateways.client(gateway, username=isolation.alice)
    bob_gw = gateways.client(gateway, username=isolation.bob)
    try:
        alice_cluster, bob_cluster = alice_gw.new_cluster(), bob_gw.new_cluster()
        alice_cluster.scale(1)
        bob_cluster.scale(1)
        wait_for(lambda: workers_of(alice_cluster) == 1, what="alice's worker")
        wait_for(lambda: workers_of(bob_cluster) == 1, what="bob's worker")
        alice_client, bob_client = alice_cluster.get_client(), bob_cluster.get_client()

        for user, cluster in ((isolation.alice, alice_cluster), (isolation.bob, bob_cluster)):
            directory = work / cluster.name
            info = directory.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (isolation.uid(user), 0o700)
            procs = processes_in(directory.resolve())
            assert len(procs) >= 2  # scheduler, nanny (and its worker)
            assert {p.uids().real for p in procs} == {isolation.uid(user)}
        info = work.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o711)

        [alice_scheduler] = [
            p
            for p in processes_in((work / alice_cluster.name).resolve())
            if p.cwd() == str((work / alice_cluster.name).resolve())
        ]
        schedulers = {
            "own": bob_client.scheduler_info()["address"],
            "alice": alice_client.scheduler_info()["address"],
        }
        probe = bob_client.submit(
            bob_probe(),
            str(work),
            alice_cluster.name,
            alice_scheduler.pid,
            str(gateway.state_dir),
            schedulers,
        ).result(timeout=60)

        assert probe["uid"] == isolation.uid(isolation.bob)
        assert probe["home"] == pwd.getpwnam(isolation.bob).pw_dir
        assert probe["own key"] == "allowed"  # the paths are right: only alice's are closed
        for what in (
            "alice's key",
            "alice's directory",
            "alice's scheduler log",
            "alice's scheduler environment",
            "work directory listing",
            "gateway secrets",
            "gateway database",
        ):
            assert probe[what] == "PermissionError", (what, probe)
        assert probe["gateway's inherited environment"] == []
        assert probe["own scheduler"] == "allowed"  # accepted: it sent its Dask handshake
        assert probe["alice's scheduler"] == "SSLError"  # bob's certificate is refused

        assert alice_client.submit(lambda: __import__("os").getuid()).result() == isolation.uid(
            isolation.alice
        )
        alice_client.close()
        bob_client.close()
        alice_cluster.shutdown()
        bob_cluster.shutdown()
        wait_for(lambda: not processes_in(work.resolve()), what="both clusters' processes to end")
        assert os.listdir(work) == []
    finally:
        alice_gw.close()
        bob_gw.close()


@needs_root
def test_hostile_or_system_user_names_are_refused_never_mapped_to_another_account(
    isolation, per_user_gateway
):
    alice = isolation.alice
    refusals = {
        f"../{alice}": "cannot be an OS account name",
        f"{alice}/..": "cannot be an OS account name",
        f"{alice}/../root": "cannot be an OS account name",
        f" {alice}": "cannot be an OS account name",
        f"{alice}$": "cannot be an OS account name",
        alice.upper(): "has no OS account on the gateway's machine",
        "root": "is a system account (uid 0",
        "daemon": "is a system account",
        "nobody": "is a system account",
    }
    for name, why in refusals.items():
        status, body = http(per_user_gateway, "POST", "/api/v1/clusters/", {}, username=name)
        assert (status, why in body.get("error", "")) == (422, True), (name, status, body)
        assert repr(name) in body["error"]  # shown quoted and escaped
    # Control characters may be refused before the launcher sees them; refused they are.
    for name in (f"{alice}\n", f"{alice}\nroot", f"root\x00{alice}"):
        status, body = http(per_user_gateway, "POST", "/api/v1/clusters/", {}, username=name)
        assert status in (403, 422) and body.get("error"), (name, status, body)
    assert os.listdir(isolation.work) == []  # no directory made, nothing started
    assert http(per_user_gateway, "GET", "/api/v1/clusters/", username="root") == (200, {})


def test_shared_mode_with_a_multi_user_authenticator_is_refused_at_start_up(tmp_path):
    """A facility config (upstream's own command, any user may log in) without a choice."""
    state = tmp_path / "gw"
    config = tmp_path / "facility_config.py"
    gateway = GatewayProcess(
        state,
        command=[sys.executable, "-m", "dask_gateway_server", "-f", str(config)],
    )
    config.write_text(
        'c.DaskGateway.backend_class = "gateway_backend.ElasticBackend"\n'
        'c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"\n'
        f'c.Proxy.address = "127.0.0.1:{gateway.port}"\n'
        f"c.LocalLauncher.work_directory = {str(tmp_path / 'work')!r}\n"
    )
    try:
        with pytest.raises(RuntimeError) as err:
            gateway.start()
    finally:
        gateway.kill()
    message = str(err.value)
    assert "gateway exited" in message
    assert "LocalLauncher.run_as = 'gateway' runs every user's clusters as the gateway's" in message
    assert "LocalLauncher.allow_shared_local_user = True" in message
    assert not (tmp_path / "work").exists() or os.listdir(tmp_path / "work") == []


def test_the_embedded_gateway_refuses_clusters_for_users_other_than_its_own(gateway):
    owner = gateway.client_credentials()["username"]
    status, body = http(gateway, "POST", "/api/v1/clusters/", {}, username="mallory")
    assert status == 422
    assert f"for its single user {owner!r} only (LocalLauncher.single_user)" in body["error"]
    assert http(gateway, "GET", "/api/v1/clusters/", username="mallory") == (200, {})
