"""Why running workers ended: asked of their launchers, told once, stopping clusters left alone."""

from __future__ import annotations

from types import SimpleNamespace

from dask_gateway_server.backends.db_base import JobStatus

from gateway_backend.events import EventLog
from gateway_backend.launchers import Check, Phase
from gateway_backend.worker_fates import WorkerFates


class FakeLauncher:
    def __init__(self, failed: set[str]) -> None:
        self.failed = failed
        self.asked: list[list[str]] = []

    async def check_workers(self, workers):
        self.asked.append([w.name for w in workers])
        return [
            Check(Phase.FAILED, "the worker process was killed by signal 9")
            if w.name in self.failed
            else Check(Phase.RUNNING)
            for w in workers
        ]


class FakeKeeper:
    log = SimpleNamespace(debug=lambda *a: None)

    def __init__(self) -> None:
        self.collected: list[str] = []

    async def collect(self, cluster, workers=(), scheduler=False):
        self.collected += [w.name for w in workers]


def cluster(name: str, workers: list[str], target=JobStatus.RUNNING):
    c = SimpleNamespace(name=name, status=JobStatus.RUNNING, target=target)
    c.workers = {
        w: SimpleNamespace(name=w, status=JobStatus.RUNNING, target=JobStatus.RUNNING, cluster=c)
        for w in workers
    }
    c.active_workers = lambda: list(c.workers.values())
    return c


def fates_of(clusters, launcher):
    pool = SimpleNamespace(name="local", launcher=launcher)
    events, keeper, conditions = EventLog(), FakeKeeper(), {}
    fates = WorkerFates(lambda: clusters, lambda w: pool, events, conditions, keeper)
    return fates, events, keeper, conditions


async def test_a_running_worker_that_died_is_told_once_with_its_reason_and_log():
    c = cluster("c1", ["w1", "w2"])
    launcher = FakeLauncher(failed={"w1"})
    fates, events, keeper, conditions = fates_of([c], launcher)

    await fates.check_running()
    await fates.check_running()

    [event] = events.get("c1")
    assert (
        event["message"]
        == "worker w1 in pool local ended: the worker process was killed by signal 9"
    )
    assert event["level"] == "error"
    assert [e["worker"] for e in fates.ended("c1")] == ["w1"]
    assert keeper.collected == ["w1"]  # its log kept while it still exists
    assert conditions["w1"].phase == Phase.FAILED
    assert launcher.asked == [["w1", "w2"], ["w2"]]  # a told worker is not asked again


async def test_workers_of_a_stopping_cluster_are_not_explained():
    c = cluster("c1", ["w1"], target=JobStatus.STOPPED)
    launcher = FakeLauncher(failed={"w1"})
    fates, events, _, _ = fates_of([c], launcher)

    await fates.check_running()

    assert launcher.asked == [] and events.get("c1") == []


def test_ended_workers_are_bounded_per_cluster():
    fates, _, _, _ = fates_of([], FakeLauncher(set()))
    for i in range(80):
        fates.record("c1", f"w{i}", "local", "exited with code 1")
    ended = fates.ended("c1")
    assert len(ended) == 50 and ended[-1]["worker"] == "w79"
