"""End to end through the real ``elastic-gateway serve``: the state directory and the local
password stay this user's, against a second gateway, other users and a port squatter."""

from __future__ import annotations

import copy
import os
import stat
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dask.config
import pytest
from dask_gateway.config import defaults as dask_gateway_defaults

from client_ext import ElasticGateway, GatewayIdentityError
from client_ext.auth import CLIENT_FILE, IDENTITY_PATH
from gateway_backend.embedded import LOCK_FILE, SECRETS_FILE, GatewayProcess

from ..conftest import FAST_CONFIG, Gateways, wait_for, workers_of

pytestmark = pytest.mark.e2e


def second_serve(gateways: Gateways, first: GatewayProcess, extra_config: str = ""):
    """Another ``serve`` on ``first``'s state directory (own port, config and log)."""
    config = gateways.tmp_path / "second_config.py"
    config.write_text(FAST_CONFIG + extra_config)
    second = GatewayProcess(
        first.state_dir, config_file=config, log_path=gateways.tmp_path / "second.log"
    )
    gateways.started.append(second)  # stopped on teardown, whatever happens
    return second


def test_second_serve_on_the_same_state_directory_exits_naming_the_holders_pid(gateways):
    first = gateways.start()
    files = (CLIENT_FILE, SECRETS_FILE, LOCK_FILE)
    before = {name: (first.state_dir / name).read_bytes() for name in files}
    second = second_serve(gateways, first)

    with pytest.raises(RuntimeError, match="exited with code 1"):
        second.start(timeout=60)

    assert (
        f"{first.state_dir} is in use by another `elastic-gateway serve` (pid {first.proc.pid})"
        in second.log_tail()
    )
    assert {name: (first.state_dir / name).read_bytes() for name in files} == before


def test_refused_second_serve_leaves_the_first_ones_cluster_running(gateways):
    first = gateways.start()
    gw = gateways.client(first)
    cluster = gw.new_cluster()
    try:
        cluster.scale(1)
        wait_for(lambda: workers_of(cluster) == 1, what="1 worker")
        # Had it started, this second gateway would have adopted the cluster and stopped it
        # for missed heartbeats within 2 s + one check period.
        second = second_serve(gateways, first, "c.ElasticBackend.cluster_heartbeat_timeout = 2\n")
        with pytest.raises(RuntimeError, match="exited with code 1"):
            second.start(timeout=60)
        time.sleep(5)

        assert gw.cluster_details(cluster.name)["status"] == "RUNNING"
        with cluster.get_client() as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
    finally:
        cluster.shutdown()
        gw.close()


def test_the_state_directory_is_free_again_after_its_gateway_is_killed(gateways):
    gateway = gateways.start()
    gw = gateways.client(gateway)
    gw.new_cluster(shutdown_on_close=False).close()  # its scheduler outlives the crash
    gw.close()
    gateway.kill()

    gateway.start()  # raises if the lock were still held

    gw = gateways.client(gateway)
    try:
        [cluster] = gw.list_clusters()
        gw.stop_cluster(cluster.name)
        wait_for(lambda: not gateway.leftover_processes(), what="the cluster's processes to end")
    finally:
        gw.close()


@pytest.fixture
def dask_defaults_for(monkeypatch: pytest.MonkeyPatch):
    """Point ``client_ext`` at a gateway's state directory, dask config as dask_gateway ships."""

    def use(gateway: GatewayProcess) -> None:
        monkeypatch.setenv("ELASTIC_GATEWAY_STATE_DIR", str(gateway.state_dir))
        for name in ("ELASTIC_GATEWAY_ADDRESS", "JUPYTERHUB_API_TOKEN"):
            monkeypatch.delenv(name, raising=False)

    shipped = copy.deepcopy(dask_gateway_defaults["gateway"]["auth"])
    with dask.config.set({"gateway.address": None, "gateway.auth": shipped}):
        yield use


def test_the_readme_snippet_works_with_dask_gateways_default_config(gateways, dask_defaults_for):
    gateway = gateways.start()
    dask_defaults_for(gateway)
    assert dask.config.get("gateway.auth.type") == "basic"

    gw = ElasticGateway()
    try:
        assert gw.address == gateway.address
        assert gw.list_clusters() == []  # authenticated: anonymous gets 401
    finally:
        gw.close()


class Impostor(ThreadingHTTPServer):
    """Whatever binds the gateway's port once it stopped: asks for Basic auth, records all."""

    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.received: list[bytes] = []
        super().__init__(("127.0.0.1", port), ImpostorHandler)


class ImpostorHandler(BaseHTTPRequestHandler):
    server: Impostor

    def do_GET(self) -> None:
        self._record_and_answer()

    def do_POST(self) -> None:
        self._record_and_answer()

    def _record_and_answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.received.append(self.raw_requestline + bytes(self.headers) + body)
        if self.path.startswith(IDENTITY_PATH):
            self._answer(200, b'{"proof": "%s"}' % (b"0" * 64), {})
        else:
            self._answer(401, b"Unauthorized", {"WWW-Authenticate": 'Basic realm="gateway"'})

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def impostor_on() -> Iterator:
    servers: list[Impostor] = []

    def bind(port: int) -> Impostor:
        def try_bind():
            try:
                return Impostor(port)
            except OSError:  # the stopped gateway's proxy may take a moment to let go
                return None

        server = wait_for(try_bind, timeout=20, what=f"port {port} to be free")
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    try:
        yield bind
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_an_impostor_on_the_recorded_port_never_receives_the_password(
    gateways, dask_defaults_for, impostor_on
):
    gateway = gateways.start()
    dask_defaults_for(gateway)
    creds = gateway.client_credentials()
    password = creds["password"].encode()
    basic = b64encode(f"{creds['username']}:{creds['password']}".encode())
    gateway.stop()
    impostor = impostor_on(gateway.port)

    gw = ElasticGateway()
    try:
        gw.list_clusters()
    except Exception as err:  # checked below, after what the impostor received
        refusal = err
    else:
        refusal = None
    finally:
        gw.close()

    requests = b"".join(impostor.received)
    assert b"GET /api/v1/clusters/" in requests  # the impostor was asked, and answered 401
    assert password not in requests
    assert basic not in requests  # as an Authorization: Basic header would carry it
    assert b"authorization" not in requests.lower()
    assert IDENTITY_PATH.encode() in requests  # it was challenged instead, and failed
    assert isinstance(refusal, GatewayIdentityError)
    assert "not sending the local gateway's password" in str(refusal)


def readable_by_others(state_dir: Path) -> list[str]:
    """Everything under ``state_dir`` that group or others may use (sockets aside)."""
    found = []
    for root, _dirs, files in os.walk(state_dir):
        for path in [Path(root), *(Path(root) / f for f in files)]:
            try:
                st = path.lstat()
            except FileNotFoundError:  # a worker's temporary file, gone meanwhile
                continue
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
                continue
            if st.st_mode & 0o077:
                found.append(f"{path} {stat.S_IMODE(st.st_mode):04o}")
    return found


def test_serve_keeps_everything_in_its_state_directory_private(gateways):
    gateway = gateways.start()
    gw = gateways.client(gateway)
    cluster = gw.new_cluster()  # its directory, TLS files and logs too
    try:
        cluster.scale(1)
        wait_for(lambda: workers_of(cluster) == 1, what="1 worker")

        assert stat.S_IMODE(gateway.state_dir.stat().st_mode) == 0o700
        assert (gateway.state_dir / "gateway.sqlite").exists()
        assert readable_by_others(gateway.state_dir) == []
    finally:
        cluster.shutdown()
        gw.close()


def test_serve_tightens_a_state_directory_others_could_read(gateways):
    state_dir = gateways.tmp_path / "gw0"
    state_dir.mkdir()
    state_dir.chmod(0o755)

    gateway = gateways.start(name="gw0")

    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert readable_by_others(state_dir) == []
    assert f"state directory {state_dir} was mode 0755; set it to 0700" in gateway.log_tail()
