"""Worker pools: the admin's pool config, and which pools a cluster and a worker belong to."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway_backend.config import ConfigError
from gateway_backend.pools import PoolBook, PoolSpec, WorkerPool, parse_pool_specs


def pool(name: str, cap: int | None = None, vos=()) -> WorkerPool:
    return WorkerPool(name, launcher=None, max_workers=cap, vos=frozenset(vos))


def test_pool_specs_default_to_the_local_launcher_without_cap():
    assert parse_pool_specs({"here": {}}) == {"here": PoolSpec("local", None, frozenset(), None)}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ({}, "worker_pools is empty"),
        ({"p": {"max_workers": -1}}, "['p']['max_workers'] must be a non-negative integer"),
        ({"p": {"vos": "cms"}}, "['p']['vos'] must be a list of VO names"),
        ({"p": []}, "['p'] must be a dict of settings"),
        ({"p": {"burst_after": 0}}, "['p']['burst_after'] must be a positive number of seconds"),
    ],
)
def test_bad_pool_specs_name_the_key(specs, message):
    with pytest.raises(ConfigError) as err:
        parse_pool_specs(specs)
    assert message in str(err.value)
    assert "ElasticBackend.worker_pools" in str(err.value)


def test_pool_vo_restriction():
    assert pool("any").allows(None)
    assert pool("cms-only", vos=["cms"]).allows("cms")
    assert not pool("cms-only", vos=["cms"]).allows("dune")
    assert not pool("cms-only", vos=["cms"]).allows(None)


def test_pool_settings_other_than_the_pool_keys_are_kept_for_the_launcher():
    spec = parse_pool_specs({"gpu": {"launcher": "htcondor", "requirements": "CUDA", "vos": []}})
    assert spec["gpu"].settings == {"requirements": "CUDA"}


def book(**defaults) -> PoolBook:
    return PoolBook([pool("a"), pool("b", vos=["cms"]), pool("c")], defaults)


def test_a_clusters_pools_are_its_choice_in_order_each_once():
    assert [p.name for p in book().pools_for({"worker_pools": "c, a,c"})] == ["c", "a"]


def test_without_a_choice_a_cluster_uses_its_vos_default_then_every_pool_it_may_use():
    pools = book(cms=["b", "a"], **{"*": ["c"]})
    assert [p.name for p in pools.pools_for({"vo": "cms"})] == ["b", "a"]
    assert [p.name for p in pools.pools_for({"vo": "dune"})] == ["c"]
    assert [p.name for p in book().pools_for({"vo": "dune"})] == ["a", "c"]


def test_pools_a_cluster_may_not_use_are_refused_by_name():
    with pytest.raises(ValueError, match="worker_pools: 'b' is not a pool you may use; choose"):
        book().refuse_unusable({"worker_pools": "a,b"}, "dune")


def test_default_pools_must_name_configured_pools():
    with pytest.raises(ConfigError, match=r"default_worker_pools\['cms'\] must list pool names"):
        book(cms=["nope"])


def test_a_worker_belongs_to_the_pool_recorded_in_its_state_else_the_first():
    pools = book()
    assert pools.pool_of(SimpleNamespace(state={"pool": "c"})).name == "c"
    assert pools.pool_of(SimpleNamespace(state={})).name == "a"
