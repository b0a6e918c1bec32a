"""A data server on loopback that demands a bearer token, like an XCache/EOS/dCache HTTPS door.

HTTPS with a certificate of a test CA; files served with ``Range`` support (uproot
reads ROOT files in ranges); only requests with ``Authorization: Bearer <JWT>`` whose
HS256 signature is the test issuer's, whose ``exp`` is in the future and whose ``jti``
is not revoked get data (401 without a token, 403 for a bad, expired or revoked one).
Runs in a thread of the test process, stopped by ``close()``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import ssl
import threading
import time
import uuid
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ISSUER = "https://issuer.example.test"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class TokenIssuer:
    """Signs WLCG-profile-like JWTs (HS256 with a secret of the test)."""

    def __init__(self) -> None:
        self.key = uuid.uuid4().bytes * 2

    def token(self, subject: str, lifetime: float = 4 * 3600) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "scope": "storage.read:/",
            "wlcg.ver": "1.0",
            "exp": int(time.time() + lifetime),
            "jti": uuid.uuid4().hex,
        }
        body = _b64(json.dumps(claims).encode())
        signature = _b64(hmac.new(self.key, header + b"." + body, hashlib.sha256).digest())
        return (header + b"." + body + b"." + signature).decode()

    def verify(self, token: str) -> dict | None:
        try:
            header, body, signature = token.encode().split(b".")
            expected = _b64(hmac.new(self.key, header + b"." + body, hashlib.sha256).digest())
            if not hmac.compare_digest(signature, expected):
                return None
            claims = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
        except ValueError:
            return None
        return claims if claims.get("iss") == ISSUER and claims["exp"] > time.time() else None


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "data.example.test")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class DataServer:
    """Serves ``root`` over HTTPS on 127.0.0.1 to holders of a valid bearer token."""

    def __init__(self, root: Path, tmp: Path, issuer: TokenIssuer) -> None:
        self.root = root
        self.issuer = issuer
        self.revoked: set[str] = set()
        self.refusals: list[int] = []
        self.cert, key = self_signed(tmp)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(self.cert, key)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the data server did not start")

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def revoke(self, token: str) -> None:
        claims = self.issuer.verify(token)
        if claims:
            self.revoked.add(claims["jti"])

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            self.refusals.append(401)
            raise web.HTTPUnauthorized(reason="a bearer token is required")
        claims = self.issuer.verify(token.strip())
        if claims is None or claims["jti"] in self.revoked:
            self.refusals.append(403)
            raise web.HTTPForbidden(reason="the token is invalid, expired or revoked")
        path = (self.root / request.match_info["name"]).resolve()
        if path.parent != self.root.resolve() or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("GET", "/{name}", self._serve)
        app.router.add_route("HEAD", "/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
