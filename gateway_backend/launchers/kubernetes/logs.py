"""Pod logs through the Kubernetes log API (``GET pods/<name>/log``), for ``fetch_logs``.

The gateway asks just before it deletes pods (and when the owner asks), so the
logs of failed and stopped workers survive their pods. A pod that is gone or
whose container never started has no log: it is left out, not an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from kubernetes_asyncio.client import CoreV1Api

# Statuses meaning "no log to read": the pod is gone, or its container never started.
NO_LOG = frozenset({400, 404})
CONCURRENT_READS = 20  # a scale-down of hundreds of pods must not open hundreds of requests


async def read_pod_log(
    core: CoreV1Api, namespace: str, pod: str, *, limit_bytes: int, request_timeout: float
) -> str | None:
    """The (last ``limit_bytes`` of the) log of ``pod``'s container, or None if it has none."""
    resp = await core.read_namespaced_pod_log(
        pod,
        namespace,
        limit_bytes=limit_bytes,
        _preload_content=False,
        _request_timeout=request_timeout,
    )
    try:
        body = await resp.read()
    finally:
        resp.release()
    if resp.status in NO_LOG:
        return None
    if not 200 <= resp.status < 300:
        raise RuntimeError(f"reading the log of pod {pod} failed with {resp.status}")
    return body.decode("utf-8", "replace")


async def read_pod_logs(
    core: CoreV1Api,
    namespace: str,
    pods: Mapping[str, str],
    *,
    limit_bytes: int,
    request_timeout: float,
) -> dict[str, str]:
    """``{process name: log}`` for ``{process name: pod name}``, read concurrently."""
    names = list(pods)
    limit = asyncio.Semaphore(CONCURRENT_READS)

    async def read(name: str) -> str | None:
        async with limit:
            return await read_pod_log(
                core,
                namespace,
                pods[name],
                limit_bytes=limit_bytes,
                request_timeout=request_timeout,
            )

    results = await asyncio.gather(*(read(n) for n in names), return_exceptions=True)
    out = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, str) and result:
            out[name] = result
    return out
