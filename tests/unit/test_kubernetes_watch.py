"""Unit tests of the pod informer: list, watch, resume, re-list on 410, back off on errors."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from gateway_backend.launchers.base import LauncherUnavailable
from gateway_backend.launchers.kubernetes.watch import PodCache

LOG = logging.getLogger("test")


def obj(name: str, rv: int, **labels) -> dict:
    return {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels}}


class FakeAPI:
    """Scripted list and watch answers for PodCache."""

    def __init__(self, lists, watches):
        self.lists = list(lists)
        self.watches = list(watches)
        self.watch_rvs: list[str] = []

    async def list_pods(self):
        item = self.lists.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def open_watch(self, rv):
        self.watch_rvs.append(rv)
        if not self.watches:
            await asyncio.sleep(3600)
        item = self.watches.pop(0)
        if isinstance(item, BaseException):
            raise item

        async def events():
            for ev in item:
                if isinstance(ev, BaseException):
                    raise ev
                yield ev

        return events()


async def run_cache(api: FakeAPI, until, seconds: float = 5, **backoff) -> PodCache:
    backoff = {"backoff_min": 0.01, "backoff_max": 0.02, **backoff}
    cache = PodCache(api.list_pods, api.open_watch, LOG, **backoff)
    task = asyncio.ensure_future(cache.run())
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while not until(cache):
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return cache


async def test_cache_lists_then_watches_from_the_lists_resource_version():
    api = FakeAPI(
        [{"metadata": {"resourceVersion": "10"}, "items": [obj("a", 5)]}],
        [[{"type": "ADDED", "object": obj("b", 11)}, {"type": "DELETED", "object": obj("a", 12)}]],
    )
    cache = await run_cache(api, lambda c: "b" in c.pods and "a" not in c.pods)
    assert api.watch_rvs[0] == "10"
    assert cache.resource_version == "12"
    assert cache.has_seen("11", 0) and cache.has_seen("12", 0) and not cache.has_seen("13", 0)


async def test_cache_resumes_from_its_resource_version_after_a_cut_without_relisting():
    cut = ConnectionResetError("connection cut")
    api = FakeAPI(
        [{"metadata": {"resourceVersion": "10"}, "items": []}],
        [
            [{"type": "ADDED", "object": obj("a", 11)}, cut],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}],
            [{"type": "ADDED", "object": obj("b", 21)}],
        ],
    )
    cache = await run_cache(api, lambda c: "b" in c.pods)
    assert api.watch_rvs[:3] == ["10", "11", "20"]
    assert cache.lists == 1 and set(cache.pods) == {"a", "b"}


async def test_a_410_forces_a_relist_that_replaces_the_cache():
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    api = FakeAPI(
        [
            {"metadata": {"resourceVersion": "10"}, "items": [obj("a", 5)]},
            {"metadata": {"resourceVersion": "50"}, "items": [obj("b", 40)]},
        ],
        [[gone]],
    )
    cache = await run_cache(api, lambda c: c.lists == 2)
    assert set(cache.pods) == {"b"} and cache.resource_version == "50"
    assert api.watch_rvs == ["10", "50"]


async def test_errors_disconnect_the_cache_and_back_off_until_the_api_answers():
    down = LauncherUnavailable("connection refused")
    # The first watch breaks mid-stream, two re-opens are refused, the fourth works.
    api = FakeAPI([{"metadata": {"resourceVersion": "7"}, "items": []}], [[down], down, down, []])
    opened = []  # (time, connected, error) each time a watch is opened
    open_watch = api.open_watch

    async def recording_open_watch(rv):
        opened.append((time.monotonic(), cache.connected, cache.error))
        return await open_watch(rv)

    api.open_watch = recording_open_watch
    cache = None

    def done(c):
        nonlocal cache
        cache = c
        return len(opened) >= 5 and c.connected

    await run_cache(api, done, backoff_min=0.05, backoff_max=1.0)
    for _, connected, error in opened[1:4]:
        assert not connected and "connection refused" in error
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(opened[1:5])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # the pause doubles: 0.05, 0.1, 0.2 s
    assert api.watch_rvs == ["7"] * 5 and cache.lists == 1  # resumed, never re-listed
    assert cache.connected and cache.error == ""
