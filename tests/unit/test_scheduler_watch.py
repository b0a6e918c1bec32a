"""Running clusters whose scheduler ended are failed at the launcher's word (scheduler_watch)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from dask_gateway_server.backends.db_base import JobStatus

from gateway_backend.launchers import Check, Phase
from gateway_backend.scheduler_watch import fail_ended_schedulers

LOG = logging.getLogger("test")


class FakeLauncher:
    def __init__(self, answers: dict[str, Check]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    async def check_schedulers(self, clusters):
        self.asked.append([c.name for c in clusters])
        return [self.answers[c.name] for c in clusters]


class FakeDb:
    def __init__(self, clusters) -> None:
        self.clusters = clusters

    def active_clusters(self):
        return list(self.clusters)

    def update_cluster(self, cluster, **kwargs):
        for key, value in kwargs.items():
            setattr(cluster, key, value)


class FakeQueue:
    def __init__(self) -> None:
        self.put_in: list[str] = []

    def put(self, cluster) -> None:
        self.put_in.append(cluster.name)


def cluster(name: str, status=JobStatus.RUNNING, target=JobStatus.RUNNING):
    return SimpleNamespace(name=name, status=status, target=target)


async def test_a_running_cluster_whose_scheduler_failed_is_failed_and_queued():
    dead, alive = cluster("dead"), cluster("alive")
    launcher = FakeLauncher(
        {"dead": Check(Phase.FAILED, "pod p failed"), "alive": Check(Phase.RUNNING)}
    )
    queue = FakeQueue()
    await fail_ended_schedulers(FakeDb([dead, alive]), queue, launcher, LOG)
    assert (dead.target, alive.target) == (JobStatus.FAILED, JobStatus.RUNNING)
    assert queue.put_in == ["dead"]


async def test_a_pending_answer_leaves_the_cluster_to_the_heartbeat_timeout():
    c = cluster("c")
    launcher = FakeLauncher({"c": Check(Phase.PENDING, "Kubernetes API unreachable")})
    queue = FakeQueue()
    await fail_ended_schedulers(FakeDb([c]), queue, launcher, LOG)
    assert c.target == JobStatus.RUNNING and queue.put_in == []


async def test_starting_and_stopping_clusters_are_not_asked_about():
    starting = cluster("starting", status=JobStatus.SUBMITTED)
    stopping = cluster("stopping", target=JobStatus.STOPPED)
    launcher = FakeLauncher({})
    await fail_ended_schedulers(FakeDb([starting, stopping]), FakeQueue(), launcher, LOG)
    assert launcher.asked == []


async def test_a_launcher_that_cannot_answer_fails_nothing():
    c = cluster("c")

    class Broken(FakeLauncher):
        async def check_schedulers(self, clusters):
            raise OSError("API server away")

    queue = FakeQueue()
    await fail_ended_schedulers(FakeDb([c]), queue, Broken({}), LOG)
    assert c.target == JobStatus.RUNNING and queue.put_in == []
