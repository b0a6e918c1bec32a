"""The analyst's bearer token reaches their workers, is used there, and is renewed in place.

A real HTTPS data server on loopback (tests/data_server.py) serves generated ROOT files
only to a valid, unexpired, unrevoked token; coffea's Runner with DaskExecutor reads them
through uproot on gateway workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..conftest import http, wait_for, workers_of
from ..data_server import DataServer, TokenIssuer

pytestmark = pytest.mark.e2e

processor = pytest.importorskip("coffea.processor")


@pytest.fixture
def data_server(tmp_path):
    from .test_coffea import write_events

    data = tmp_path / "data"
    data.mkdir()
    in_range = write_events(str(data / "events.root"))
    issuer = TokenIssuer()
    server = DataServer(data, tmp_path, issuer)
    server.in_range = in_range
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def token_file(tmp_path, monkeypatch, data_server):
    """The analyst's token where WLCG discovery finds it ($BEARER_TOKEN_FILE), 0600."""
    path = tmp_path / "bt_alice"
    path.write_text(data_server.issuer.token("alice") + "\n")
    path.chmod(0o600)
    for name in ("BEARER_TOKEN", "X509_USER_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(path))
    return path


def runner_for(client):
    import cloudpickle
    from coffea.nanoevents import BaseSchema

    from . import test_coffea

    cloudpickle.register_pickle_by_value(test_coffea)  # workers can't import tests/
    return processor.Runner(
        executor=processor.DaskExecutor(client=client, status=False),
        schema=BaseSchema,
        chunksize=5_000,
    )


def read(runner, server: DataServer) -> dict:
    from .test_coffea import MuonPt

    fileset = {"data": {"files": {server.url("events.root"): "Events"}}}
    return runner(fileset, processor_instance=MuonPt())


def trusting(server: DataServer) -> str:
    """Workers trust the data server's CA (as sites install theirs)."""
    return f"c.ElasticClusterConfig.environment = {{'SSL_CERT_FILE': {str(server.cert)!r}}}\n"


def test_coffea_reads_protected_data_with_the_forwarded_token_and_after_renewal(
    gateways, data_server, token_file
):
    gateway = gateways.start(trusting(data_server))
    gw = gateways.client(gateway)
    cluster = gw.new_cluster(forward_credentials=False)
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
    client = cluster.get_client()
    runner = runner_for(client)

    with pytest.raises(Exception, match="401") as refused:  # no token: the server's answer
        read(runner, data_server)
    assert "bearer token is required" in str(refused.value) or "Unauthorized" in str(refused.value)

    summary = cluster.forward_credentials()
    assert summary["bt"]["source"] == str(token_file) and summary["bt"]["expires"]
    out = read(runner, data_server)
    assert (out["events"], out["pt"].sum()) == (20_000, data_server.in_range)
    assert cluster.details()["credentials"] == summary

    pids = client.run(os.getpid)
    data_server.revoke(token_file.read_text().strip())  # the issuer rotates the token
    with pytest.raises(Exception, match="403"):
        read(runner, data_server)
    token_file.write_text(data_server.issuer.token("alice"))
    cluster.forward_credentials()
    out = read(runner, data_server)
    assert out["events"] == 20_000
    assert client.run(os.getpid) == pids  # no worker was restarted

    def token_file_on_worker():
        path = os.environ["BEARER_TOKEN_FILE"]
        return oct(os.stat(path).st_mode & 0o777), oct(os.stat(os.path.dirname(path)).st_mode)

    assert set(client.run(token_file_on_worker).values()) == {("0o600", "0o40700")}
    client.close()
    cluster.shutdown()


def test_credentials_are_forwarded_by_default_and_appear_nowhere_else(
    gateways, data_server, token_file, tmp_path
):
    gateway = gateways.start()
    gw = gateways.client(gateway)
    token = token_file.read_text().strip()
    with gw.new_cluster() as cluster:  # discovered and forwarded without being asked
        cluster.scale(1)
        client = cluster.get_client()
        wait_for(lambda: workers_of(cluster) == 1, what="a worker")
        [seen] = client.run(lambda: open(os.environ["BEARER_TOKEN_FILE"]).read()).values()
        assert seen == token
        assert "bt (expires" in cluster._repr_html_()
        leaks = places_holding(token.encode(), [gateway.state_dir, tmp_path], token_file)
        assert leaks == []
        client.close()


def places_holding(secret: bytes, roots: list[Path], own_file: Path) -> list[str]:
    """Command lines, environments of processes, and world-readable or gateway-owned files
    (logs, database) that contain ``secret``; the analyst's own file and the workers'
    0600 copies are where it belongs."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                if secret in (proc / what).read_bytes():
                    found.append(f"/proc/{proc.name}/{what}")
            except OSError:
                continue
    for root in roots:
        for path in Path(root).rglob("*"):
            try:
                if not path.is_file() or path == own_file:
                    continue
                mode = path.stat().st_mode
                if path.parent.name == "credentials" and mode & 0o077 == 0:
                    continue  # a worker's private copy
                if secret in path.read_bytes():
                    found.append(f"{path} (mode {oct(mode & 0o777)})")
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": "two\nlines"}, "one line of printable ASCII"),
        ({"files": {"../escape": b"x"}}, "use letters, digits"),
        ({"files": {"big": b"x" * (256 * 1024 + 1)}}, "larger than"),
    ],
)
def test_what_cannot_be_a_credential_is_refused_before_it_is_sent(kwargs, message):
    from client_ext.credentials import collect

    with pytest.raises(ValueError, match=message):
        collect(discover=False, **kwargs)


def test_expiry_is_read_from_the_jwt(data_server):
    from client_ext.credentials import TOKEN, expiry_of

    when = expiry_of(TOKEN, data_server.issuer.token("alice", lifetime=600).encode())
    assert when is not None and 500 < when.timestamp() - __import__("time").time() <= 600


def test_a_token_about_to_expire_is_forwarded_with_a_warning(gateways, data_server, token_file):
    token_file.write_text(data_server.issuer.token("alice", lifetime=600))
    gateway = gateways.start()
    gw = gateways.client(gateway)
    with pytest.warns(UserWarning, match="expires at .*: renew it and call"):
        cluster = gw.new_cluster()
    with cluster:
        assert cluster.details()["credentials"]["bt"]["expires"]


def test_without_credentials_nothing_is_forwarded_and_opting_out_is_honoured(
    gateways, token_file, monkeypatch
):
    gateway = gateways.start()
    gw = gateways.client(gateway)
    monkeypatch.setenv("ELASTIC_GATEWAY_FORWARD_CREDENTIALS", "0")
    with gw.new_cluster() as cluster:
        assert cluster.details()["credentials"] == {}


def test_the_refresher_forwards_a_renewed_token_while_the_notebook_runs(
    gateways, data_server, token_file
):
    gateway = gateways.start()
    gw = gateways.client(gateway)
    with gw.new_cluster(forward_credentials=False) as cluster:
        cluster.scale(1)
        client = cluster.get_client()
        wait_for(lambda: workers_of(cluster) == 1, what="a worker")
        cluster.forward_credentials(refresh_every=0.5)
        renewed = data_server.issuer.token("alice")
        token_file.write_text(renewed)  # what a token agent (oidc-agent, htgettoken) does

        def worker_token():
            [seen] = client.run(lambda: open(os.environ["BEARER_TOKEN_FILE"]).read()).values()
            return seen == renewed

        wait_for(worker_token, timeout=30, what="the renewed token on the worker")
        client.close()


def test_another_user_can_neither_reach_nor_replace_them(gateways, token_file):
    from .test_quotas import GROUPS_AUTH

    gateway = gateways.start(GROUPS_AUTH)
    alice = gateways.client(gateway, "alice")
    bob = gateways.client(gateway, "bob")
    with alice.new_cluster() as cluster:
        assert cluster.details()["credentials"]["bt"]
        # The scheduler, which holds them, is reached only with the cluster's TLS key,
        # which the gateway gives its owner only.
        status, _ = http(gateway, "GET", f"/api/v1/clusters/{cluster.name}", username="bob")
        assert status in (403, 404)
        with pytest.raises(Exception, match=r"403|404|not found|lacks permissions"):
            bob.connect(cluster.name)


def test_credentials_end_with_the_cluster_and_survive_a_gateway_restart(
    gateways, data_server, token_file
):
    gateway = gateways.start()
    gw = gateways.client(gateway)
    cluster = gw.new_cluster(shutdown_on_close=False)
    name = cluster.name
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, what="a worker")
    client = cluster.get_client()
    [path] = client.run(lambda: os.environ["BEARER_TOKEN_FILE"]).values()
    client.close()
    cluster.close()
    gateway.kill()  # a crash or an upgrade: clusters keep running
    gateway.start()  # adopts the cluster; the scheduler still holds the credentials
    gw = gateways.client(gateway)
    cluster = gw.connect(name)
    cluster.scale(2)  # a worker that joins after the restart
    wait_for(lambda: workers_of(cluster) == 2, what="a second worker")
    client = cluster.get_client()
    token = token_file.read_text().strip()
    assert set(client.run(lambda: open(os.environ["BEARER_TOKEN_FILE"]).read()).values()) == {token}
    client.close()
    cluster.shutdown()
    wait_for(lambda: not Path(path).exists(), what="the worker's copy gone with the cluster")
