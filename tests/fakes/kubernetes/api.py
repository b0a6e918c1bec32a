"""What every part of the process kubelet needs to talk to the API server: its timestamps, the
merge-patch type, and a list+watch loop and a retry that ride out API-server outages."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tests.k8s.kubeclient import Kube, KubeError

log = logging.getLogger("kubelet")
# Pods share one network: the host's (127.0.0.1), or a namespace of a networking test,
# whose address the harness passes here (its pods then run in that namespace).
LOCAL_IP = os.environ.get("PROCESS_KUBELET_POD_IP", "127.0.0.1")
#: The Node's own address (its InternalIP, pods' hostIP, where the kubelet serves logs):
#: the host's, also when the pods run in a network namespace.
NODE_IP = "127.0.0.1"
POD_NETNS = os.environ.get("PROCESS_KUBELET_POD_NETNS", "")
TERMINAL = ("Succeeded", "Failed")
MERGE = "application/merge-patch+json"


def now() -> str:
    """An API timestamp (seconds)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """An API MicroTime (what a Lease's renewTime needs)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def informer(
    name: str,
    kube: Kube,
    path: str,
    query: Mapping[str, str],
    on_event: Callable[[str, dict], Awaitable[None]],
    on_relist: Callable[[list[dict]], Awaitable[None]],
    on_synced: Callable[[], None],
) -> None:
    """List, then watch from that resourceVersion, forever; re-list when the watch expires (410).

    ``on_synced`` is called after every successful list.
    """
    rv = ""
    delay = 0.2
    while True:
        try:
            if not rv:
                body = await kube.get(path, query)
                rv = body["metadata"]["resourceVersion"]
                await on_relist(body.get("items") or [])
                on_synced()
            async for event in kube.watch(path, query, rv, seconds=30):
                obj = event.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if event["type"] != "BOOKMARK":
                    await on_event(event["type"], obj)
            delay = 0.2
        except asyncio.CancelledError:
            raise
        except KubeError as exc:
            if exc.status == 410:
                log.info("%s watch expired; re-listing", name)
                rv = ""
                continue
            log.warning("%s watch failed: %s", name, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3)
        except Exception as exc:
            log.info("%s watch failed: %r", name, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3)


async def retry(fn: Callable[[], Awaitable[Any]], what: str, attempts: int = 50) -> Any:
    """``await fn()`` until it succeeds, backing off up to 3 s; the last failure propagates."""
    delay = 0.2
    for i in range(attempts):
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if i == attempts - 1:
                raise
            log.warning("%s failed (%r); retrying", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3)
