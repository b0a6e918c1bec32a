"""The informer: one list+watch of this gateway's pods, so status checks never call the API.

The watch resumes from its last resourceVersion when the stream ends or
breaks, re-lists on 410 Gone and backs off on errors; the cost does not grow
with the number of clusters.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from .client import KubernetesAPIError, KubernetesForbidden, WatchExpired, describe_error


def resource_version_int(rv: Any) -> int | None:
    """resourceVersions are opaque strings; every real API server uses etcd revisions."""
    try:
        return int(rv)
    except (TypeError, ValueError):
        return None


class PodCache:
    """Pods of one label selector, kept current by one list+watch.

    ``open_watch(resource_version)`` returns an async iterator of watch events
    (dicts with ``type`` and ``object``); ``list_pods()`` returns a PodList
    dict. The loop resumes the watch from the last resourceVersion when the
    stream ends or breaks, re-lists on 410 Gone, and backs off on errors.
    Readers use ``pods``, ``connected`` (is the cache current?) and
    ``has_seen`` (would a pod created at that point be in the cache?).
    """

    def __init__(
        self,
        list_pods: Callable[[], Awaitable[dict]],
        open_watch: Callable[[str], Awaitable[AsyncIterator[dict]]],
        log: logging.Logger,
        *,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        on_sync: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.list_pods = list_pods
        self.open_watch = open_watch
        self.log = log
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.on_sync = on_sync
        self.pods: dict[str, dict] = {}
        self.resource_version = ""
        self.listed_at = 0.0  # wall time at which the last successful list was requested
        self.synced = asyncio.Event()
        self.connected = False
        self.error = ""
        self.lists = 0  # successful lists (the first one and every re-list)

    def apply(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event to the cache."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise WatchExpired(obj.get("message", "resourceVersion too old"))
            raise KubernetesAPIError(int(code or 500), obj.get("message") or str(obj))
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self.pods[meta["name"]] = obj
        elif kind == "DELETED":
            self.pods.pop(meta.get("name"), None)
        if rv:
            self.resource_version = rv

    def has_seen(self, created_rv: Any, created_at: float) -> bool:
        """Whether the cache reflects the API past a pod created at (``created_rv``, time).

        True means: a pod created then that is missing from the cache was deleted.
        """
        if not self.connected:
            return False
        ours, cache = resource_version_int(created_rv), resource_version_int(self.resource_version)
        if ours is not None and cache is not None and cache >= ours:
            return True
        return bool(created_at) and self.listed_at > created_at

    async def relist(self) -> None:
        """Replace the cache with a fresh list, then let ``on_sync`` compare it with the DB."""
        started = time.time()
        body = await self.list_pods()
        self.pods = {p["metadata"]["name"]: p for p in body.get("items") or []}
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion", "")
        self.listed_at = started
        self.lists += 1
        self.connected = True
        self.error = ""
        self.synced.set()
        if self.on_sync is not None:
            try:
                await self.on_sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("Reconciling after a pod list failed", exc_info=True)

    async def run(self) -> None:
        """List, then watch for ever: resume, re-list on 410, back off on errors."""
        delay = self.backoff_min
        while True:
            try:
                if not self.resource_version:
                    await self.relist()
                    self.log.info(
                        "Pod cache listed %d pods at resourceVersion %s",
                        len(self.pods),
                        self.resource_version,
                    )
                stream = await self.open_watch(self.resource_version)
                if not self.connected or self.error:
                    self.log.info(
                        "Pod watch resumed from resourceVersion %s", self.resource_version
                    )
                self.connected, self.error = True, ""
                delay = self.backoff_min
                async for event in stream:
                    self.apply(event)
                # The server ended the stream (its time-out): resume from the same version.
            except asyncio.CancelledError:
                raise
            except WatchExpired as exc:
                self.log.warning(
                    "Pod watch: resourceVersion %s is gone (410: %s); re-listing",
                    self.resource_version,
                    exc,
                )
                self.connected = False  # events were missed: stale until the re-list
                self.resource_version = ""
            except Exception as exc:
                self.connected = False
                self.error = describe_error(exc)
                if isinstance(exc, KubernetesForbidden):
                    self.log.error("Pod watch failed: %s", exc)
                else:
                    self.log.warning("Pod watch failed (%s); retrying in %.1fs", self.error, delay)
                await asyncio.sleep(delay * (1 + 0.2 * random.random()))
                delay = min(delay * 2, self.backoff_max)
