"""Unit tests: pool config parsing, placement, option refusals, batching, commands."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from gateway_backend.batching import Batcher
from gateway_backend.commands import proxy_sni, worker_command, worker_env
from gateway_backend.options import default_cluster_options, explain_invalid_options
from gateway_backend.placement import ordered_spill
from gateway_backend.pools import ConfigError, PoolSpec, WorkerPool, parse_pool_specs


def pool(name: str, cap: int | None = None, vos=()) -> WorkerPool:
    return WorkerPool(name, launcher=None, max_workers=cap, vos=frozenset(vos))


def test_pool_specs_default_to_the_local_launcher_without_cap():
    assert parse_pool_specs({"here": {}}) == {"here": PoolSpec("local", None, frozenset(), None)}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ({}, "worker_pools is empty"),
        ({"p": {"max_wrokers": 1}}, "['p'] has unknown key(s) ['max_wrokers']"),
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


def test_ordered_spill_fills_pools_in_order_up_to_each_cap():
    pods, jobs = pool("pods", cap=2), pool("jobs")
    plan = ordered_spill([pods, jobs], {}, 8)
    assert [(p.name, k) for p, k in plan] == [("pods", 2), ("jobs", 6)]


def test_ordered_spill_counts_workers_already_in_a_pool():
    pods, jobs = pool("pods", cap=2), pool("jobs", cap=10)
    plan = ordered_spill([pods, jobs], {"pods": 2, "jobs": 7}, 5)
    assert [(p.name, k) for p, k in plan] == [("jobs", 3)]


def test_ordered_spill_places_nothing_when_every_pool_is_full():
    assert ordered_spill([pool("a", cap=1)], {"a": 1}, 3) == []


def test_ordered_spill_counts_a_pool_listed_twice_once():
    a = pool("a", cap=2)
    assert [(p.name, k) for p, k in ordered_spill([a, a, a], {}, 6)] == [("a", 2)]


def test_pool_vo_restriction():
    assert pool("any").allows(None)
    assert pool("cms-only", vos=["cms"]).allows("cms")
    assert not pool("cms-only", vos=["cms"]).allows("dune")
    assert not pool("cms-only", vos=["cms"]).allows(None)


def test_valid_options_need_no_explanation():
    options = default_cluster_options(4, 8)
    assert explain_invalid_options(options, {"worker_cores": 2, "worker_memory": 4}) is None


def test_every_bad_option_is_named_with_its_valid_range():
    options = default_cluster_options(4, 8)
    message = explain_invalid_options(options, {"worker_cores": 0, "worker_memory": 64, "x": 1})
    assert "unknown option(s) 'x': remove them (this gateway accepts: worker_cores" in message
    assert "worker_cores=0 is not valid: use an integer from 1 to 4" in message
    assert "worker_memory=64 is not valid: use a number from 0.25 to 8" in message


def test_numbers_too_large_for_a_float_are_refused_not_crashed_on():
    message = explain_invalid_options(default_cluster_options(4, 8), {"worker_memory": 10**400})
    assert (
        "worker_memory=1000" in message and "is not valid: use a number from 0.25 to 8" in message
    )
    assert len(message) < 300


def test_options_must_be_a_mapping():
    assert "must be a mapping" in explain_invalid_options(default_cluster_options(1, 1), [1])


def test_default_options_turn_gib_into_bytes():
    options = default_cluster_options(4, 8)
    config = options.get_configuration({"worker_cores": 2, "worker_memory": 1.5}, None)
    assert config == {"worker_cores": 2, "worker_memory": int(1.5 * 2**30)}


async def test_batcher_hands_items_added_together_to_one_call():
    calls = []

    async def handler(items):
        calls.append(list(items))

    batcher = Batcher(handler, window=0.01)
    await asyncio.gather(*(batcher.add(i) for i in range(5)))
    await batcher.add(99)
    assert calls == [[0, 1, 2, 3, 4], [99]]


async def test_batcher_reports_a_failed_call_to_every_item():
    async def handler(items):
        raise RuntimeError("schedd down")

    batcher = Batcher(handler, window=0.01)
    results = await asyncio.gather(batcher.add(1), batcher.add(2), return_exceptions=True)
    assert [str(r) for r in results] == ["schedd down", "schedd down"]


def fake_cluster():
    config = SimpleNamespace(
        worker_cmd=["dask", "worker"],
        worker_threads=2,
        worker_memory=2**30,
        environment={"EXTRA": "1"},
    )
    return SimpleNamespace(name="abc", token="secret-token", config=config)


def test_worker_command_routes_through_the_proxy_by_sni():
    cluster = fake_cluster()
    cmd = worker_command(
        cluster, "w1", "tls://proxy:8786", host="0.0.0.0", scheduler_sni=proxy_sni(cluster)
    )
    assert cmd[:3] == ["dask", "worker", "tls://proxy:8786"]
    assert cmd[cmd.index("--scheduler-sni") + 1] == "daskgateway-abc"
    assert cmd[cmd.index("--name") + 1] == "w1"


def test_worker_environment_carries_no_api_token():
    env = worker_env(fake_cluster(), cert_path="dask.crt", key_path="dask.pem")
    assert "secret-token" not in env.values()
    assert env["DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"] == "dask.pem"
    assert env["EXTRA"] == "1"


def test_configuration_reference_matches_the_code():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "docs" / "gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TARGET.read_text() == module.render(), (
        "docs/configuration.md is out of date: run python docs/gen_config_reference.py"
    )
