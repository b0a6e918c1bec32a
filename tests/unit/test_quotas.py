"""Unit tests of the quota model: config parsing, VO choice, usage and grants."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.utils import FrozenAttrDict

from gateway_backend.config import ConfigError
from gateway_backend.quotas import (
    VO,
    QuotaRefused,
    Usage,
    check_new_cluster,
    choose_vo,
    parse_memory,
    parse_vos,
    vo_usage,
    workers_grantable,
)

GIB = 2**30


def config(**kw):
    base = dict(
        scheduler_cores=1,
        scheduler_memory=2 * GIB,
        worker_cores=2,
        worker_memory=4 * GIB,
        worker_gpus=0,
    )
    return FrozenAttrDict({**base, **kw})


def cluster(vo, user="alice", workers=0, **kw):
    active = SimpleNamespace(is_active=lambda: True, status=JobStatus.RUNNING)
    stopped = SimpleNamespace(is_active=lambda: False, status=JobStatus.STOPPED)
    return SimpleNamespace(
        options={"vo": vo},
        username=user,
        config=config(**kw),
        workers={f"w{i}": active for i in range(workers)} | {"old": stopped},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8 TiB", 8 * 2**40),
        ("512G", 512 * GIB),
        ("100 MB", 10**8),
        (1024, 1024),
        ("1.5 GiB", 1.5 * GIB),
    ],
)
def test_memory_sizes_parse_with_binary_and_decimal_units(text, expected):
    assert parse_memory(text) == int(expected)


def test_vo_config_parses_limits_and_memory_strings():
    vos = parse_vos({"cms": {"groups": ["cms", "uscms"], "max_memory": "8 TiB", "max_cores": 20}})
    assert vos["cms"] == VO("cms", frozenset({"cms", "uscms"}), max_cores=20, max_memory=8 * 2**40)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"cms": {"max_core": 1}}, "ElasticBackend.vos['cms'] has unknown key(s) ['max_core']"),
        (
            {"cms": {"max_cores": -1}},
            "ElasticBackend.vos['cms']['max_cores'] must be a non-negative",
        ),
        (
            {"cms": {"max_memory": "lots"}},
            "ElasticBackend.vos['cms']['max_memory']: 'lots' is not a",
        ),
        (
            {"cms": {"max_clusters_per_user": 1.5}},
            "['max_clusters_per_user'] must be a non-negative integer",
        ),
        ({"cms": {"groups": "cms"}}, "ElasticBackend.vos['cms']['groups'] must be a list"),
    ],
)
def test_bad_vo_config_names_the_key(spec, message):
    with pytest.raises(ConfigError) as err:
        parse_vos(spec)
    assert message in str(err.value)


VOS = parse_vos({"cms": {"groups": ["cms"]}, "dune": {"groups": ["dune"]}, "guest": {}})


def test_a_users_only_vo_is_chosen_from_their_groups():
    assert choose_vo("alice", ["cms", "staff"], "", VOS, "refuse").name == "cms"


def test_a_user_in_several_vos_must_pick_one():
    with pytest.raises(QuotaRefused, match="several VOs \\(cms, dune\\): choose one"):
        choose_vo("dave", ["cms", "dune"], "", VOS, "refuse")
    assert choose_vo("dave", ["cms", "dune"], "dune", VOS, "refuse").name == "dune"


def test_picking_a_vo_one_is_not_a_member_of_is_refused():
    with pytest.raises(
        QuotaRefused, match="alice is not a member of VO 'dune' \\(your VOs: cms\\)"
    ):
        choose_vo("alice", ["cms"], "dune", VOS, "refuse")


def test_users_without_vo_are_refused_or_placed_as_configured():
    with pytest.raises(QuotaRefused, match="belongs to no VO"):
        choose_vo("eve", ["staff"], "", VOS, "refuse")
    assert choose_vo("eve", ["staff"], "", VOS, "guest").name == "guest"


def test_a_user_without_vo_may_name_the_fallback_vo():
    assert choose_vo("eve", ["staff"], "guest", VOS, "guest").name == "guest"
    with pytest.raises(QuotaRefused, match="eve is not a member of VO 'cms'"):
        choose_vo("eve", ["staff"], "cms", VOS, "guest")


def test_a_vo_member_cannot_escape_to_the_fallback_vo():
    with pytest.raises(QuotaRefused, match="alice is not a member of VO 'guest'"):
        choose_vo("alice", ["cms"], "guest", VOS, "guest")


def test_usage_counts_schedulers_and_active_workers_per_vo():
    usage = vo_usage([cluster("cms", workers=3), cluster("cms", "bob"), cluster("dune")])
    cms = usage["cms"]
    assert (cms.cores, cms.memory, cms.workers, cms.clusters) == (
        1 + 6 + 1,
        (2 + 12 + 2) * GIB,
        3,
        2,
    )
    assert cms.clusters_by_user == {"alice": 1, "bob": 1}


def test_a_stopping_worker_counts_until_it_has_stopped():
    # Told to stop (target STOPPED) while still running: its cores are not free yet.
    stopping = SimpleNamespace(is_active=lambda: False, status=JobStatus.RUNNING)
    never_started = SimpleNamespace(is_active=lambda: False, status=JobStatus.CREATED)
    c = cluster("cms")
    c.workers |= {"stopping": stopping, "never-started": never_started}
    assert vo_usage([c])["cms"].workers == 1


def test_the_backend_decides_which_workers_count_beyond_their_records():
    # The backend also counts workers whose start call still runs, stopped or not.
    starting = SimpleNamespace(is_active=lambda: False, status=JobStatus.STOPPED)
    c = cluster("cms")
    c.workers |= {"starting": starting}
    assert vo_usage([c])["cms"].workers == 0
    assert vo_usage([c], holds=lambda w: w is starting)["cms"].workers == 1


def test_new_cluster_refused_at_max_clusters_per_user():
    vo = VO("cms", max_clusters_per_user=1)
    usage = vo_usage([cluster("cms")])["cms"]
    with pytest.raises(QuotaRefused, match="max_clusters_per_user=1 and user alice already has 1"):
        check_new_cluster(vo, usage, "alice", config())
    check_new_cluster(vo, usage, "bob", config())


def test_new_cluster_refused_when_its_scheduler_exceeds_vo_cores():
    vo = VO("cms", max_cores=8)
    with pytest.raises(
        QuotaRefused, match="max_cores=8, in use 8; a new cluster's scheduler needs 1"
    ):
        check_new_cluster(vo, Usage(cores=8), "alice", config())


def test_grantable_workers_follow_the_tightest_limit():
    vo = VO("cms", max_cores=10, max_memory=20 * GIB)
    room, binding = workers_grantable(vo, Usage(cores=3, memory=9 * GIB), config())
    assert (room, binding) == (2, "max_memory")  # cores allow 3, memory only 2


def test_unlimited_vo_grants_without_bound():
    assert workers_grantable(VO("cms"), Usage(), config()) == (None, "")
