"""Clusters' TLS keys are made off the event loop and used once (issue 16)."""

from __future__ import annotations

import asyncio
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dask_gateway_server.backends import db_base
from dask_gateway_server.backends.db_base import DataManager
from dask_gateway_server.tls import new_keypair as upstream_new_keypair

from gateway_backend import tls_keys
from gateway_backend.tls_keys import TLSKeys


def public_numbers(key_pem: bytes):
    return serialization.load_pem_private_key(key_pem, None).public_key().public_numbers()


def test_the_certificate_is_upstreams_with_the_clusters_name():
    ours = x509.load_pem_x509_certificate(tls_keys.new_keypair("abc")[0])
    theirs = x509.load_pem_x509_certificate(upstream_new_keypair("abc")[0])
    assert ours.subject == theirs.subject and ours.issuer == theirs.issuer
    assert list(ours.extensions) == list(theirs.extensions)
    assert ours.not_valid_after_utc - ours.not_valid_before_utc == (
        theirs.not_valid_after_utc - theirs.not_valid_before_utc
    )


def test_the_key_and_certificate_belong_together(tmp_path):
    cert, key = tls_keys.new_keypair("abc")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    ssl.create_default_context().load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")


async def test_a_new_record_uses_the_key_prepared_by_its_request(monkeypatch):
    monkeypatch.setattr(db_base, "new_keypair", db_base.new_keypair)  # undone after the test
    tls_keys.install()
    db = DataManager()
    keys = TLSKeys(spares=0)

    async def request() -> tuple[object, object]:
        await keys.prepare()
        prepared = tls_keys._prepared.get()
        cluster = db.create_cluster("alice", {}, {})
        return prepared.public_key().public_numbers(), public_numbers(cluster.tls_key)

    prepared, used = await asyncio.create_task(request())
    assert prepared == used


async def test_a_prepared_key_serves_one_cluster_only(monkeypatch):
    monkeypatch.setattr(db_base, "new_keypair", db_base.new_keypair)
    tls_keys.install()
    db = DataManager()
    keys = TLSKeys(spares=0)

    async def request() -> list[object]:
        await keys.prepare()
        first = db.create_cluster("alice", {}, {})
        second = db.create_cluster("alice", {}, {})
        return [public_numbers(first.tls_key), public_numbers(second.tls_key)]

    first, second = await asyncio.create_task(request())
    assert first != second


async def test_spare_keys_are_made_in_the_background_for_the_next_requests():
    keys = TLSKeys(spares=2)
    await keys.prepare()
    await asyncio.gather(*list(keys._making))
    assert len(keys._spare) == 2
