"""The embedded gateway proves who it is before local clients send it the password.

``elastic-gateway serve`` draws a key at every start and writes it, with the
address and password, into ``client.json`` (mode 0600). ``client_ext`` sends a
fresh challenge to this route and sends the password only if the answer is the
HMAC of that challenge under the key: a process that took the port after the
gateway stopped cannot answer. The route is unauthenticated by design; it
reveals nothing about the key (HMAC is a pseudo-random function).
"""

from __future__ import annotations

import secrets

from aiohttp import web

from client_ext.auth import IDENTITY_PATH, identity_proof, valid_challenge


def new_identity_key() -> str:
    """A key for one start of the gateway (never reused, never logged)."""
    return secrets.token_hex(32)


def add_identity_route(app: web.Application, key: str) -> None:
    """Answer ``GET IDENTITY_PATH?challenge=HEX`` with ``{"proof": HMAC(key, challenge)}``."""

    async def prove_identity(request: web.Request) -> web.Response:
        challenge = request.query.get("challenge", "")
        if not valid_challenge(challenge):
            return web.json_response(
                {"error": "challenge must be 32 to 128 lowercase hex digits"}, status=400
            )
        return web.json_response(
            {"proof": identity_proof(key, challenge)}, headers={"Cache-Control": "no-store"}
        )

    app.router.add_get(IDENTITY_PATH, prove_identity)
