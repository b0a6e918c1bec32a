"""Quota bookkeeping over live records: VO of a cluster, usage, grants, refusal counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.utils import FrozenAttrDict

from gateway_backend.config import ConfigError
from gateway_backend.quota_book import QuotaBook
from gateway_backend.quotas import QuotaRefused

GIB = 2**30
SIZES = dict(
    scheduler_cores=1, scheduler_memory=GIB, worker_cores=1, worker_memory=GIB, worker_gpus=0
)
CONFIG = FrozenAttrDict(SIZES)


def cluster(vo: str, workers: int = 0, user: str = "alice"):
    running = SimpleNamespace(is_active=lambda: True, status=JobStatus.RUNNING)
    return SimpleNamespace(
        options={"vo": vo},
        username=user,
        config=CONFIG,
        workers={f"w{i}": running for i in range(workers)},
        active_workers=lambda: [running] * workers,
    )


def book(clusters, vos=None, fallback="refuse") -> QuotaBook:
    vos = vos or {"cms": {"groups": ["cms"], "max_cores": 4}, "dune": {"groups": ["dune"]}}
    return QuotaBook(vos, fallback, lambda: clusters)


def user(name="alice", groups=("cms",), admin=False):
    return SimpleNamespace(name=name, groups=list(groups), admin=admin)


def test_usage_is_read_from_the_live_records_on_every_question():
    clusters = [cluster("cms", workers=1)]
    quotas = book(clusters)
    assert quotas.usage_of(quotas.vos["cms"]).cores == 2
    clusters.append(cluster("cms", workers=1, user="bob"))
    assert quotas.usage_of(quotas.vos["cms"]).cores == 4


def test_grants_are_clamped_with_a_reason_naming_the_vo_limit():
    existing = cluster("cms", workers=1)
    quotas = book([existing])
    granted, why = quotas.grantable(existing, 5)
    assert granted == 2
    assert why.startswith("3 worker(s) wait for VO cms quota (")


def test_a_cluster_without_vo_is_granted_everything():
    assert book([]).grantable(cluster(""), 7) == (7, None)


def test_refusals_are_counted_only_under_configured_vo_names():
    quotas = book([])
    with pytest.raises(QuotaRefused):
        quotas.choose(user(), "x" * 1000)
    with pytest.raises(QuotaRefused):
        quotas.choose(user(groups=()), "")
    with pytest.raises(QuotaRefused):
        quotas.admit_cluster(
            quotas.vos["cms"], "alice", FrozenAttrDict({**SIZES, "scheduler_cores": 9})
        )
    assert dict(quotas.refusals) == {
        ("(unknown)", "membership"): 1,
        ("", "membership"): 1,
        ("cms", "cluster"): 1,
    }


def test_users_see_their_vos_and_admins_every_vo():
    quotas = book([], fallback="dune")
    assert [vo.name for vo in quotas.visible_to(user())] == ["cms"]
    assert [vo.name for vo in quotas.visible_to(user(groups=()))] == ["dune"]
    assert sorted(vo.name for vo in quotas.visible_to(user(admin=True))) == ["cms", "dune"]


def test_a_fallback_vo_that_does_not_exist_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="users_without_vo = 'guests' names no VO"):
        book([], fallback="guests")
