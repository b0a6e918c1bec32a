"""Usage over all clusters is counted again only after records changed (issue 16).

On upstream's real ``DataManager`` (in-memory SQLite), with the real quota arithmetic.
"""

from __future__ import annotations

import pytest
from dask_gateway_server.backends.db_base import DataManager, JobStatus

import gateway_backend.quota_book as quota_book
from gateway_backend.cluster_config import ElasticClusterConfig
from gateway_backend.quota_book import QuotaBook
from gateway_backend.record_changes import RECORD_WRITERS, CountedOnce, RecordChanges

VOS = {"cms": {"groups": ["cms"], "max_cores": 1000}}


@pytest.fixture
async def db():
    # Cluster records hold asyncio objects: made inside a running loop.
    return DataManager()


def running_cluster(db: DataManager, workers: int = 0):
    cluster = db.create_cluster("alice", {"vo": "cms"}, ElasticClusterConfig().to_dict())
    db.update_cluster(cluster, status=JobStatus.RUNNING)
    for _ in range(workers):
        worker = db.create_worker(cluster)
        db.update_worker(worker, status=JobStatus.SUBMITTED)
    return cluster


def test_every_record_writer_is_a_datamanager_method():
    assert all(callable(getattr(DataManager, name, None)) for name in RECORD_WRITERS)


async def test_a_write_through_a_watched_manager_changes_the_version(db):
    changes = RecordChanges()
    changes.watch(db)
    cluster = running_cluster(db)
    before = changes.version
    db.update_cluster(cluster, count=3)
    assert changes.version != before


def test_a_count_is_kept_until_the_records_change():
    changes = RecordChanges()
    changes.version = 0
    calls = []
    counted = CountedOnce(changes, lambda: calls.append(1) or len(calls))
    assert (counted(), counted()) == (1, 1)
    changes.bump()
    assert counted() == 2


def test_nothing_is_kept_before_the_manager_is_watched():
    calls = []
    counted = CountedOnce(RecordChanges(), lambda: calls.append(1) or len(calls))
    assert (counted(), counted()) == (1, 2)


async def test_vo_usage_follows_a_worker_that_stopped(db):
    changes = RecordChanges()
    changes.watch(db)
    quotas = QuotaBook(VOS, "refuse", db.active_clusters, version=lambda: changes.version)
    cluster = running_cluster(db, workers=2)
    vo = quotas.vos["cms"]
    assert quotas.usage_of(vo).workers == 2
    [worker, _] = cluster.workers.values()
    db.update_worker(worker, status=JobStatus.STOPPED, target=JobStatus.STOPPED)
    assert quotas.usage_of(vo).workers == 1


async def test_vo_usage_is_counted_once_between_changes(db, monkeypatch):
    changes = RecordChanges()
    changes.watch(db)
    quotas = QuotaBook(VOS, "refuse", db.active_clusters, version=lambda: changes.version)
    running_cluster(db, workers=1)
    counts = []
    real = quota_book.vo_usage
    monkeypatch.setattr(quota_book, "vo_usage", lambda c, holds: counts.append(1) or real(c, holds))
    vo = quotas.vos["cms"]
    quotas.usage_of(vo)
    quotas.usage_of(vo)
    assert len(counts) == 1
