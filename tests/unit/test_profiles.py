"""Profiles as the admin writes them and as users choose them: validation and choices."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from gateway_backend.config import ConfigError
from gateway_backend.pools import PoolBook, WorkerPool
from gateway_backend.profile_book import ProfileBook
from gateway_backend.profiles import SizeChoice, check_references, parse_profiles
from gateway_backend.quota_book import QuotaBook


def user(name="alice", groups=("cms",), admin=False):
    return SimpleNamespace(name=name, groups=list(groups), admin=admin)


def book(profiles, vos=None, pools=("cpu", "gpu")):
    quotas = QuotaBook(vos or {}, "refuse", lambda: [])
    pool_book = PoolBook([WorkerPool(n, launcher=None) for n in pools])
    return ProfileBook(profiles, quotas, pool_book)


def fields(options) -> dict:
    return {f.field: f for f in options.fields}


VOS = {"cms": {"groups": ["cms"]}, "dune": {"groups": ["dune"]}}


@pytest.mark.parametrize(
    ("profiles", "message"),
    [
        ({"p": {"colour": "red"}}, "ElasticBackend.profiles['p'] has unknown key(s) ['colour']"),
        ({"p": {"image": "img\nqueue 9"}}, "ElasticBackend.profiles['p']['image']"),
        ({"p": {"image": 'a"b'}}, "is not an image reference or path"),
        ({"p": {"python": "python3"}}, "['python'] = 'python3' must be the absolute path"),
        ({"p": {"worker_cores": 0}}, "['worker_cores'] must be an integer of at least 1"),
        ({"p": {"worker_cores": 1.5}}, "['worker_cores'] must be an integer"),
        ({"p": {"worker_memory": {"min": 4}}}, "['worker_memory'] must have 'max'"),
        (
            {"p": {"worker_memory": {"min": 4, "max": 8, "default": 16}}},
            "need min <= default <= max",
        ),
        ({"p": {"worker_memory": []}}, "['worker_memory'] must list at least one size"),
        ({"p": {"worker_gpus": -1}}, "['worker_gpus'] must be an integer of at least 0"),
        ({"p": {"pools": "cpu"}}, "['pools'] must be a list of pool names"),
        ({"p": {"idle_timeout": -5}}, "['idle_timeout'] must be a non-negative number"),
        ({"p": {"max_lifetime": float("inf")}}, "['max_lifetime'] must be a non-negative"),
        ({"p": {"no_client_timeout": "1h"}}, "['no_client_timeout'] must be a non-negative"),
        (
            {"p": {"detached_no_client_timeout": -1}},
            "['detached_no_client_timeout'] must be a non-negative",
        ),
        ({"p": {"env": {"BAD-NAME": "x"}}}, "'BAD-NAME' is not an environment variable name"),
        ({"p": {"env": {"X": "a\nb"}}}, "['env']['X'] must be a one-line string"),
        ({"p": {"vos": "cms"}}, "['vos'] must be a list of VO names"),
        ({"": {}}, "profile names must be non-empty strings"),
    ],
)
def test_bad_profiles_are_refused_at_start_up_naming_the_key(profiles, message):
    with pytest.raises(ConfigError) as info:
        parse_profiles(profiles)
    assert message in str(info.value)


def test_sizes_are_fixed_choices_or_ranges():
    [p] = parse_profiles(
        {"p": {"worker_cores": [2, 1, 4], "worker_memory": {"min": 1, "max": 8, "default": 4}}}
    ).values()
    assert p.worker_cores == SizeChoice(2, 1, 4, (2, 1, 4))
    assert p.worker_cores.problem(3) == "one of 2, 1, 4"
    assert p.worker_memory == SizeChoice(4, 1, 8)
    assert p.worker_memory.problem(8.5) == "from 1 to 8"
    assert p.worker_memory.problem(8) is None


def test_a_profile_python_that_does_not_run_here_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="'/no/such/python' is not an executable on this"):
        book({"p": {"python": "/no/such/python"}})


def test_the_python_of_a_profile_must_be_runnable():
    [p] = parse_profiles({"p": {"python": sys.executable}}).values()
    assert p.python == sys.executable
    assert p.environment_text() == f"Python {sys.executable}"


@pytest.mark.parametrize(
    ("profiles", "message"),
    [
        ({"p": {"pools": ["tape"]}}, "['pools'] names ['tape'], not pools of"),
        ({"p": {"vos": ["atlas"]}}, "['vos'] names ['atlas'], not VOs of ElasticBackend.vos"),
    ],
)
def test_profiles_may_only_name_configured_pools_and_vos(profiles, message):
    with pytest.raises(ConfigError) as info:
        check_references(parse_profiles(profiles), ["cpu", "gpu"], ["cms"])
    assert message in str(info.value)


def test_users_are_offered_only_their_vos_profiles_in_order():
    profiles = book({"cms": {"vos": ["cms"]}, "dune": {"vos": ["dune"]}, "all": {}}, VOS)
    assert [p.name for p in profiles.usable(user("carol", ["dune"]))] == ["dune", "all"]
    select = fields(profiles.cluster_options(user("alice", ["cms"])))["profile"]
    assert (list(select.options), select.default) == (["cms", "all"], "cms")
    assert [p.name for p in profiles.usable(user("root", [], admin=True))] == ["cms", "dune", "all"]


def test_the_size_options_span_the_users_profiles_with_the_first_ones_defaults():
    profiles = book(
        {
            "small": {"worker_cores": 1, "worker_memory": [2, 4]},
            "large": {"worker_cores": {"min": 2, "max": 8}, "worker_memory": 32},
        }
    )
    options = fields(profiles.cluster_options(user()))
    cores, memory = options["worker_cores"], options["worker_memory"]
    assert (cores.default, cores.min, cores.max) == (1, 1, 8)
    assert (memory.default, memory.min, memory.max) == (2, 2, 32)


def test_a_request_without_sizes_gets_the_chosen_profiles_defaults():
    profiles = book({"small": {}, "large": {"worker_cores": [4, 8], "worker_memory": 16}})
    request = profiles.complete_request(user(), {"profile": "large"})
    assert request == {"profile": "large", "worker_cores": 4, "worker_memory": 16.0}
    assert profiles.complete_request(user(), {})["profile"] == "small"


def test_an_unlisted_profile_is_refused_naming_the_allowed_ones():
    profiles = book({"cms": {"vos": ["cms"]}, "dune": {"vos": ["dune"]}}, VOS)
    with pytest.raises(ValueError) as info:
        profiles.complete_request(user("alice", ["cms"]), {"profile": "dune"})
    assert str(info.value) == "profile 'dune' is not one you may use; choose from: cms"
    with pytest.raises(ValueError, match="profile '\\\\n' is not one you may use"):
        profiles.complete_request(user("alice", ["cms"]), {"profile": "\n"})


def test_a_user_with_no_profile_is_told_so():
    profiles = book({"dune": {"vos": ["dune"]}}, VOS)
    with pytest.raises(ValueError, match=r"no profile is offered to your VOs \(cms\)"):
        profiles.complete_request(user("alice", ["cms"]), {})


def test_the_vo_defaults_to_the_users_first_vo_the_profile_allows():
    profiles = book({"dune": {"vos": ["dune"]}}, VOS)
    request = profiles.complete_request(user("dave", ["cms", "dune"]), {})
    assert request["vo"] == "dune"


def test_sizes_vo_and_pools_outside_the_profile_are_refused():
    profiles = book(
        {"p": {"vos": ["cms"], "worker_cores": [1, 2], "pools": ["gpu"]}}, VOS, ("cpu", "gpu")
    )
    ok = {"profile": "p", "worker_cores": 2, "worker_memory": 2}
    assert profiles.check_choice(ok, "cms")["worker_pools"] == "gpu"
    with pytest.raises(ValueError, match="worker_cores=3 is not offered: use one of 1, 2"):
        profiles.check_choice({**ok, "worker_cores": 3}, "cms")
    with pytest.raises(ValueError, match="profile p is for VO\\(s\\) cms, not 'dune'"):
        profiles.check_choice(ok, "dune")
    with pytest.raises(ValueError, match="'cpu' is not a pool of profile p; choose from: gpu"):
        profiles.check_choice({**ok, "worker_pools": "cpu"}, "cms")


def test_a_profile_becomes_the_clusters_config():
    profiles = book(
        {"gpu": {"image": "img:1", "worker_gpus": 1, "idle_timeout": 600, "max_lifetime": 3600}}
    )
    options = SimpleNamespace(profile="gpu", worker_cores=2, worker_memory=1.5)
    assert profiles._config_of(options, user()) == {
        "profile": "gpu",
        "worker_cores": 2,
        "worker_memory": int(1.5 * 2**30),
        "worker_gpus": 1,
        "image": "img:1",
        "python": "",
        "idle_timeout": 600.0,
        "max_lifetime": 3600.0,
    }


def test_a_profiles_no_client_timeouts_become_the_clusters_config():
    profiles = book({"p": {"no_client_timeout": 600, "detached_no_client_timeout": 0}})
    options = SimpleNamespace(profile="p", worker_cores=1, worker_memory=2)
    config = profiles._config_of(options, user())
    assert (config["no_client_timeout"], config["detached_no_client_timeout"]) == (600.0, 0.0)
