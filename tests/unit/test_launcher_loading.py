"""Pools are configured launcher instances: shared where nothing differs, own where it does."""

from __future__ import annotations

import logging

import pytest
from traitlets.config import Config, Configurable

from gateway_backend.config import ConfigError
from gateway_backend.launchers.loading import LauncherSpec, build_launchers, scheduler_spec
from gateway_backend.launchers.local import LocalLauncher


def spec(kind="local", where="ElasticBackend.worker_pools['p']", **settings) -> LauncherSpec:
    return LauncherSpec(kind, settings, where)


def build(pools, scheduler=None, config=None):
    parent = Configurable(config=config or Config())
    log = logging.getLogger("test")
    return build_launchers(scheduler or scheduler_spec("local"), pools, parent, log)


def test_pools_that_override_nothing_share_one_instance_with_the_scheduler_launcher():
    scheduler, by_pool = build({"a": spec(), "b": spec()})
    assert by_pool["a"] is by_pool["b"] is scheduler
    assert isinstance(scheduler, LocalLauncher)


def test_a_pool_that_overrides_settings_gets_its_own_instance_with_them():
    _, by_pool = build({"plain": spec(), "slow": spec(stop_grace_period=30.0)})
    assert by_pool["slow"] is not by_pool["plain"]
    assert by_pool["slow"].stop_grace_period == 30.0
    assert by_pool["plain"].stop_grace_period == LocalLauncher().stop_grace_period


def test_pool_settings_win_over_the_class_config():
    config = Config()
    config.LocalLauncher.stop_grace_period = 7.0
    _, by_pool = build({"a": spec(), "b": spec(stop_grace_period=2.0)}, config=config)
    assert by_pool["a"].stop_grace_period == 7.0
    assert by_pool["b"].stop_grace_period == 2.0


def test_an_unknown_pool_setting_is_refused_naming_the_pool_key_and_the_settings():
    with pytest.raises(ConfigError) as err:
        build({"p": spec(stop_grace_periodd=3)})
    message = str(err.value)
    assert "ElasticBackend.worker_pools['p'] has unknown key(s) ['stop_grace_periodd']" in message
    assert "stop_grace_period" in message.split("its settings:")[1]


def test_a_bad_pool_setting_value_is_refused_naming_the_pool_key():
    with pytest.raises(ConfigError, match=r"ElasticBackend.worker_pools\['p'\]: .*stop_grace"):
        build({"p": spec(stop_grace_period="soon")})


def test_an_unknown_launcher_is_refused_naming_where_it_was_used():
    with pytest.raises(ConfigError, match=r"worker_pools\['p'\]: launcher 'nope' cannot be"):
        build({"p": spec("nope")})


def test_the_scheduler_launcher_may_be_a_dict_with_settings():
    scheduler, by_pool = build(
        {"p": spec()}, scheduler=scheduler_spec({"launcher": "local", "stop_grace_period": 9.0})
    )
    assert scheduler.stop_grace_period == 9.0 and by_pool["p"] is not scheduler


def test_a_scheduler_launcher_dict_without_launcher_is_refused():
    with pytest.raises(ConfigError, match=r"scheduler_launcher\['launcher'\] must name"):
        scheduler_spec({"namespace": "dask"})
