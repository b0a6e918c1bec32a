"""Refusals (401/403) reach the analyst with the gateway's message, not "Forbidden"."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from client_ext import ElasticGateway, GatewayRefused
from gateway_backend.embedded import free_port


@pytest.fixture
async def refusing_gateway() -> AsyncIterator[str]:
    """A server answering as the gateway does behind a proxy: a bare reason, JSON body."""

    async def with_message(request: web.Request) -> web.Response:
        body = json.dumps({"error": "its scopes lack access:services!service=dask-gateway"})
        return web.Response(status=403, text=body, content_type="application/json")

    async def without_message(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    app = web.Application()
    app.router.add_get("/with/api/v1/clusters/", with_message)
    app.router.add_get("/without/api/v1/clusters/", without_message)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_403_raises_the_gateways_message(refusing_gateway):
    async with ElasticGateway(f"{refusing_gateway}/with", asynchronous=True) as gw:
        with pytest.raises(GatewayRefused) as excinfo:
            await gw.list_clusters()
    assert excinfo.value.status == 403
    assert excinfo.value.message == "its scopes lack access:services!service=dask-gateway"


async def test_a_403_without_a_message_is_upstreams_error(refusing_gateway):
    async with ElasticGateway(f"{refusing_gateway}/without", asynchronous=True) as gw:
        with pytest.raises(aiohttp.ClientResponseError) as excinfo:
            await gw.list_clusters()
    assert not isinstance(excinfo.value, GatewayRefused) and excinfo.value.status == 403
