"""Clusters' TLS keys made off the event loop.

Upstream's ``DataManager.create_cluster`` makes each new cluster's RSA key with
``dask_gateway_server.tls.new_keypair``, on the event loop: about 50 ms of CPU
(more on a busy machine), during which no request, heartbeat or status check
is served. ``TLSKeys.prepare`` makes the key in a thread (the generation
releases the GIL) or takes a spare one, and hands it to the ``new_keypair``
that ``install`` puts in upstream's place, through a context variable of the
request's task. Without a prepared key, it makes one as upstream does.
"""

from __future__ import annotations

import asyncio
import contextvars
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

_prepared: contextvars.ContextVar[rsa.RSAPrivateKey | None] = contextvars.ContextVar(
    "elastic_gateway_prepared_tls_key", default=None
)


def generate_key() -> rsa.RSAPrivateKey:
    """An RSA key as upstream makes them (2048 bits, exponent 65537)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_keypair(sni: str) -> tuple[bytes, bytes]:
    """Upstream's ``new_keypair`` (same certificate), with the task's prepared key if any."""
    key = _prepared.get()
    _prepared.set(None)  # each key serves one cluster
    if key is None:
        key = generate_key()
    key_bytes = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    dask_internal = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    altnames = x509.SubjectAlternativeName(
        [x509.DNSName(sni), x509.DNSName("dask-internal"), x509.DNSName("skein-internal")]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(dask_internal)
        .issuer_name(dask_internal)
        .add_extension(altnames, critical=False)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_bytes


def install() -> None:
    """Make upstream's cluster records use this module's ``new_keypair``."""
    from dask_gateway_server.backends import db_base

    db_base.new_keypair = new_keypair


class TLSKeys:
    """Prepared RSA keys: a few spares made in threads between cluster creations."""

    def __init__(self, spares: int = 2) -> None:
        self.spares = spares
        self._spare: list[rsa.RSAPrivateKey] = []
        self._making: set[asyncio.Future] = set()

    async def prepare(self) -> None:
        """Have the current task's next cluster record use a key made off the event loop."""
        key = self._spare.pop() if self._spare else await asyncio.to_thread(generate_key)
        _prepared.set(key)
        while len(self._spare) + len(self._making) < self.spares:
            future = asyncio.ensure_future(asyncio.to_thread(generate_key))
            self._making.add(future)
            future.add_done_callback(self._made)

    def _made(self, future: asyncio.Future) -> None:
        self._making.discard(future)
        if not future.cancelled() and future.exception() is None:
            self._spare.append(future.result())
