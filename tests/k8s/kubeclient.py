"""A small raw-JSON Kubernetes client for the test side (process kubelet, test assertions).

Authentication and TLS come from kubernetes-asyncio's kubeconfig loader, so every kubeconfig
it understands works (client certificates, tokens, exec plugins on real clusters); requests
and watches are plain JSON, independent of the launcher's code under test.

    kube = await Kube.connect("/path/kubeconfig")
    status, body = await kube.request("GET", "/api/v1/namespaces/ns/pods")
    async for event in kube.watch("/api/v1/pods", {"fieldSelector": "spec.nodeName=n1"}, rv):
        ...

``SyncKube`` runs one on a private event-loop thread for synchronous tests.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config


class KubeError(Exception):
    def __init__(self, status: int, body: Any, what: str = "") -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{what}: {status} {message}" if what else f"{status} {message}")
        self.status = status
        self.body = body


class Kube:
    """Raw JSON requests and watches with a kubeconfig's credentials."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: str) -> Kube:
        cfg = client.Configuration()
        await config.load_kube_config(
            config_file=kubeconfig, client_configuration=cfg, persist_config=False
        )
        return cls(client.ApiClient(cfg))

    @property
    def host(self) -> str:
        return self.api.configuration.host

    async def close(self) -> None:
        await self.api.close()

    async def _raw(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        request_timeout: Any,
    ):
        return await self.api.call_api(
            path,
            method,
            path_params={},
            query_params=[(k, v) for k, v in (query or {}).items()],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=request_timeout,
        )

    async def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        *,
        content_type: str = "application/json",
        seconds: float = 15,
        ok: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """One request; raises KubeError for non-2xx statuses not listed in ``ok``."""
        resp = await self._raw(method, path, query, body, content_type, seconds)
        try:
            raw = await resp.read()
        finally:
            resp.release()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = raw.decode(errors="replace")
        if not (200 <= resp.status < 300) and resp.status not in ok:
            raise KubeError(resp.status, data, f"{method} {path}")
        return resp.status, data

    async def get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        return (await self.request("GET", path, query))[1]

    async def watch(
        self, path: str, query: Mapping[str, Any], resource_version: str, seconds: int = 60
    ) -> AsyncIterator[dict]:
        """Watch events from ``resource_version``; ends when the server ends the stream."""
        q = {
            **query,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        t = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=seconds + 15)
        resp = await self._raw("GET", path, q, None, "application/json", t)
        try:
            if resp.status != 200:
                raw = await resp.read()
                try:
                    raise KubeError(resp.status, json.loads(raw), f"watch {path}")
                except ValueError:
                    raise KubeError(resp.status, raw.decode(errors="replace")) from None
            async for line in resp.content:
                line = line.strip()
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    raise KubeError(int(obj.get("code") or 500), obj, f"watch {path}")
                yield event
        finally:
            resp.release()


class SyncKube:
    """A Kube on its own event-loop thread, for synchronous test code."""

    def __init__(self, kubeconfig: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.kube: Kube = self.run(Kube.connect(kubeconfig))

    def run(self, coro, timeout: float = 60) -> Any:
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def request(self, method: str, path: str, query=None, body=None, **kw) -> tuple[int, Any]:
        return self.run(self.kube.request(method, path, query, body, **kw))

    def get(self, path: str, query=None) -> Any:
        return self.request("GET", path, query)[1]

    def items(self, path: str, **query: str) -> list[dict]:
        return self.get(path, query or None).get("items") or []

    def close(self) -> None:
        try:
            self.run(self.kube.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
