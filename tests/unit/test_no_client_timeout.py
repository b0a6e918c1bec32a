"""No zombie clusters: the no-client clock, the stop reasons, the listing and its filters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dask_gateway.client import ClusterReport, ClusterStatus
from dask_gateway_server.backends.db_base import JobStatus
from dask_gateway_server.utils import FrozenAttrDict

from client_ext.listing import ElasticClusterReport, select, table
from gateway_backend.cluster_summary import cluster_summary
from gateway_backend.commands import scheduler_env
from gateway_backend.lifetimes import scheduler_stop_reason
from gateway_backend.scheduler_presence import NoClientTimer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def timer(timeout=60, detached=3600):
    clock = Clock()
    return NoClientTimer(timeout, detached, clock=clock), clock


def test_a_cluster_that_never_had_a_client_expires_after_the_timeout():
    t, clock = timer()
    clock.now += 60
    assert not t.expired()
    clock.now += 1
    assert t.expired()


def test_a_connected_client_keeps_the_cluster_however_long():
    t, clock = timer()
    t.add("Client-1")
    clock.now += 10_000
    assert not t.expired()


def test_the_clock_restarts_when_the_last_client_leaves():
    t, clock = timer()
    t.add("Client-1")
    t.add("Client-2")
    clock.now += 500
    t.remove("Client-1")
    clock.now += 500
    t.remove("Client-2")
    clock.now += 60
    assert not t.expired()
    clock.now += 1
    assert t.expired()


def test_fire_and_forget_is_not_a_client():
    t, clock = timer()
    t.add("fire-and-forget")
    clock.now += 61
    assert t.expired()
    assert t.report() == {"kind": "clients", "connected": 0, "detached": False}


def test_a_detached_cluster_gets_the_longer_timeout():
    t, clock = timer()
    t.detach()
    clock.now += 61
    assert not t.expired()
    clock.now += 3600
    assert t.expired()
    assert t.report()["detached"] is True


def test_a_zero_timeout_never_expires():
    t, clock = timer(timeout=0)
    clock.now += 10**9
    assert not t.expired()


def fake_cluster(profile="", **config):
    return SimpleNamespace(
        name="c1",
        config=FrozenAttrDict(
            {
                "profile": profile,
                "idle_timeout": 1800,
                "no_client_timeout": 3600,
                "detached_no_client_timeout": 86400,
                **config,
            }
        ),
    )


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        (None, "cluster stopped: no work for its idle_timeout of profile p (30 min)"),
        (
            "no_client",
            "cluster stopped: no client connected for its no_client_timeout of profile p (1 h)",
        ),
        (
            "no_client_detached",
            "cluster stopped: no client connected for its detached_no_client_timeout of "
            "profile p (1 d)",
        ),
        ("<script>", "cluster stopped: no work for its idle_timeout of profile p (30 min)"),
    ],
)
def test_the_stop_reason_is_the_gateways_text_for_the_reason_named(asked, reason):
    assert scheduler_stop_reason(fake_cluster("p"), asked) == reason


def test_the_scheduler_learns_its_timeouts_and_version_mode_from_its_environment():
    cluster = SimpleNamespace(
        name="c1",
        token="t",
        config=FrozenAttrDict(
            {
                "environment": {},
                "no_client_timeout": 30.0,
                "detached_no_client_timeout": 0.0,
                "version_mismatch": "refuse",
            }
        ),
    )
    env = scheduler_env(cluster, api_url="http://gw/api", cert_path="c", key_path="k")
    assert env["ELASTIC_GATEWAY_NO_CLIENT_TIMEOUT"] == "30.0"
    assert env["ELASTIC_GATEWAY_DETACHED_NO_CLIENT_TIMEOUT"] == "0.0"
    assert env["ELASTIC_GATEWAY_VERSION_MISMATCH"] == "refuse"


def worker(status, target=JobStatus.RUNNING):
    return SimpleNamespace(status=status, target=target)


def record(state=None):
    return SimpleNamespace(
        name="c1",
        model_status=SimpleNamespace(name="RUNNING"),
        start_time=1_000_000,
        count=4,
        config=FrozenAttrDict({"profile": "p", "worker_cores": 2, "worker_memory": 2**31}),
        state=state or {},
        workers={
            "a": worker(JobStatus.RUNNING),
            "b": worker(JobStatus.SUBMITTED),
            "c": worker(JobStatus.RUNNING, target=JobStatus.STOPPED),  # stopping
            "d": worker(JobStatus.STOPPED, target=JobStatus.STOPPED),
        },
    )


def test_the_summary_counts_workers_that_hold_resources_and_their_cores():
    s = cluster_summary(record(), now_ms=1_090_000)
    assert s["workers"] == {"running": 1, "pending": 1, "requested": 4}
    assert (s["cores"], s["memory_gib"], s["age_seconds"], s["profile"]) == (4, 4.0, 90.0, "p")


def test_last_client_activity_is_now_while_connected_then_when_the_last_left():
    connected = {"clients": {"connected": 1, "changed": 1_010_000, "ever": True}}
    assert cluster_summary(record(connected), 1_090_000)["last_client_activity"] == 1090.0
    left = {"clients": {"connected": 0, "changed": 1_020_000, "ever": True}}
    assert cluster_summary(record(left), 1_090_000)["last_client_activity"] == 1020.0
    assert cluster_summary(record(), 1_090_000)["last_client_activity"] is None


SUMMARIES = [
    {"name": "busy", "profile": "a", "age_seconds": 9000, "clients_connected": 1,
     "last_client_activity": 10_000},
    {"name": "left", "profile": "a", "age_seconds": 9000, "clients_connected": 0,
     "last_client_activity": 10_000 - 7200},
    {"name": "never", "profile": "b", "age_seconds": 600, "clients_connected": 0,
     "last_client_activity": None},
]  # fmt: skip


def test_stop_clusters_without_filters_selects_every_cluster():
    assert select(SUMMARIES, now=10_000) == ["busy", "left", "never"]


def test_stop_clusters_filters_combine():
    assert select(SUMMARIES, profile="a", now=10_000) == ["busy", "left"]
    assert select(SUMMARIES, older_than=3600, now=10_000) == ["busy", "left"]
    assert select(SUMMARIES, no_client_for=3600, now=10_000) == ["left"]
    assert select(SUMMARIES, no_client_for=300, now=10_000) == ["left", "never"]
    assert select(SUMMARIES, no_client_for=300, profile="b", now=10_000) == ["never"]


def report(summary):
    upstream = ClusterReport("c1", {}, ClusterStatus.RUNNING, None, None, None, None)
    return ElasticClusterReport.of(upstream, summary)


def test_the_listing_reads_as_a_table_with_the_client_activity():
    r = report(
        {
            "profile": "a",
            "age_seconds": 5400,
            "workers": {"running": 3, "pending": 1, "requested": 4},
            "cores": 8,
            "clients_connected": 0,
            "last_client_activity": 10_000 - 7200,
        }
    )
    assert table([r], now=10_000).splitlines() == [
        "NAME  STATUS   PROFILE  AGE    WORKERS      CORES  CLIENTS",
        "c1    RUNNING  a        1.5 h  3+1 pending  8      none for 2 h",
    ]


def test_a_stopped_clusters_report_has_no_activity_fields():
    r = report(None)
    assert (r.age, r.cores, r.last_client_activity) == (None, None, None)
    assert repr(r) == "ElasticClusterReport<name=c1, status=RUNNING>"
