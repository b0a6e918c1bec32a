"""Finding the analyst's credentials the standard ways, and what a worker makes of them."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from client_ext.credentials import (
    TOKEN,
    X509,
    ForwardedCredentials,
    collect,
    discover_token,
    discover_x509,
    expiry_of,
)
from tests.data_server import self_signed


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("X509_USER_PROXY", "BEARER_TOKEN", "BEARER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    return tmp_path


def test_bearer_token_discovery_follows_the_wlcg_order(clean_env, monkeypatch):
    runtime = clean_env / "run" / f"bt_u{os.getuid()}"
    runtime.write_text("from-runtime-dir\n")
    assert discover_token() == (b"from-runtime-dir", str(runtime))
    named = clean_env / "named"
    named.write_text("from-file")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(named))
    assert discover_token() == (b"from-file", str(named))
    monkeypatch.setenv("BEARER_TOKEN", "from-variable")
    assert discover_token() == (b"from-variable", "$BEARER_TOKEN")


def test_the_x509_proxy_is_x509_user_proxy_first(clean_env, monkeypatch):
    cert, _ = self_signed(clean_env)
    monkeypatch.setenv("X509_USER_PROXY", str(cert))
    data, source = discover_x509()
    assert source == str(cert) and b"BEGIN CERTIFICATE" in data


def test_expiry_comes_from_the_proxy_certificate(clean_env):
    cert, _ = self_signed(clean_env)
    when = expiry_of(X509, cert.read_bytes())
    assert dt.timedelta(hours=23) < when - dt.datetime.now(dt.UTC) <= dt.timedelta(days=1)
    assert expiry_of(TOKEN, b"not-a-jwt") is None


def test_a_proxy_that_is_not_pem_is_refused(clean_env):
    bad = clean_env / "proxy"
    bad.write_text("garbage")
    with pytest.raises(ValueError, match="not PEM"):
        collect(x509=str(bad), discover=False)


def test_nothing_found_means_nothing_forwarded(clean_env, monkeypatch):
    monkeypatch.setattr("client_ext.credentials.discover_x509", lambda: None)
    monkeypatch.setattr("client_ext.credentials.discover_token", lambda: None)
    assert collect().files == {}


def test_a_worker_writes_private_files_and_points_the_variables_at_them(tmp_path, monkeypatch):
    import fsspec.config

    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    monkeypatch.setattr(fsspec.config, "conf", {})  # this process's fsspec stays as it was
    worker = SimpleNamespace(local_directory=str(tmp_path), status=SimpleNamespace(name="running"))
    plugin = ForwardedCredentials({TOKEN: b"t0ken", "extra": b"x"}, {"BEARER_TOKEN_FILE": TOKEN})
    plugin.setup(worker)
    path = Path(os.environ["BEARER_TOKEN_FILE"])
    assert path.read_bytes() == b"t0ken" and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert (path.parent / "extra").read_bytes() == b"x"
    assert fsspec.config.conf["https"]["headers"]["Authorization"] == "Bearer t0ken"
    replacement = ForwardedCredentials({TOKEN: b"n3w"}, {"BEARER_TOKEN_FILE": TOKEN})
    plugin.teardown(worker)  # what a new registration does first: the file stays meanwhile
    assert path.read_bytes() == b"t0ken"
    replacement.setup(worker)
    assert path.read_bytes() == b"n3w"
    worker.status = SimpleNamespace(name="closing")
    replacement.teardown(worker)
    assert not path.exists()
