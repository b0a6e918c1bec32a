"""The HTCondor status cache reads only changed jobs between full queries (issue 16).

Constraints are evaluated by the real ``classad2`` on real ``ClassAd`` objects, in an
in-memory schedd that keeps ``EnteredCurrentStatus`` and answers ``ServerTime`` as a
schedd does; the launcher is the real one.
"""

from __future__ import annotations

from types import SimpleNamespace

import classad2
import pytest

from gateway_backend.launchers.base import Phase
from gateway_backend.launchers.htcondor import HTCondorLauncher
from gateway_backend.launchers.htcondor_status import (
    HELD,
    IDLE,
    REMOVED,
    RUNNING,
    JobInfo,
    QueryResult,
    changes_constraint,
    count_is_plausible,
    mark_removed,
    merge_changes,
    parse_ads,
)
from tests.support_launchers import known, launcher_context

INSTANCE = 'DaskGatewayInstance == "gw"'


def ad(proc: int, worker: str, status: int = IDLE, entered: int = 100, **extra) -> classad2.ClassAd:
    return classad2.ClassAd(
        {
            "ClusterId": 7,
            "ProcId": proc,
            "JobStatus": status,
            "DaskGatewayInstance": "gw",
            "DaskGatewayWorker": worker,
            "EnteredCurrentStatus": entered,
            **extra,
        }
    )


def selected(constraint: str, ads: list[classad2.ClassAd]) -> list[str]:
    expr = classad2.ExprTree(constraint)
    return [a["DaskGatewayWorker"] for a in ads if expr.eval(a) is True]


# -- reading ads ------------------------------------------------------------------------------
def test_ads_become_jobs_by_worker_name():
    result = parse_ads([ad(3, "w3", RUNNING)])
    assert result.jobs == {"w3": JobInfo("7.3", "w3", RUNNING)}


def test_only_held_jobs_keep_a_hold_reason_and_only_idle_jobs_an_idle_reason():
    ads = [
        ad(0, "held", HELD, HoldReason="disk full", LastRejMatchReason="x"),
        ad(1, "idle", IDLE, HoldReason="old", LastRejMatchReason="no match"),
    ]
    jobs = parse_ads(ads).jobs
    assert (jobs["held"].hold_reason, jobs["held"].why_idle) == ("disk full", "")
    assert (jobs["idle"].hold_reason, jobs["idle"].why_idle) == ("", "no match")


def test_the_schedd_clock_is_the_earliest_server_time_of_the_answer():
    assert parse_ads([ad(0, "a", ServerTime=50), ad(1, "b", ServerTime=49)]).server_time == 49


def test_an_answer_without_server_time_has_no_schedd_clock():
    assert parse_ads([ad(0, "a")]).server_time is None


# -- which jobs a changes-only query selects -------------------------------------------------
def test_the_changes_query_selects_jobs_that_changed_at_or_after_the_last_query():
    ads = [
        ad(0, "before", entered=99),
        ad(1, "same-second", entered=100),
        ad(2, "after", entered=101),
    ]
    assert selected(changes_constraint(INSTANCE, 100), ads) == ["same-second", "after"]


def test_the_changes_query_selects_jobs_leaving_the_queue_whenever_they_changed():
    ads = [ad(0, "removed", REMOVED, entered=1), ad(1, "completed", 4, entered=1)]
    assert selected(changes_constraint(INSTANCE, 100), ads) == ["removed", "completed"]


def test_the_changes_query_keeps_to_this_gateways_jobs():
    other = ad(0, "other", entered=200)
    other["DaskGatewayInstance"] = "another gateway"
    assert selected(changes_constraint(INSTANCE, 100), [other]) == []


# -- folding answers into the cache -------------------------------------------------------
def test_changes_replace_their_jobs_and_keep_the_unchanged_ones():
    cache = {"a": JobInfo("7.0", "a", IDLE), "b": JobInfo("7.1", "b", IDLE)}
    merge_changes(cache, QueryResult({"b": JobInfo("7.1", "b", RUNNING)}, 5))
    assert cache == {"a": JobInfo("7.0", "a", IDLE), "b": JobInfo("7.1", "b", RUNNING)}


def test_a_leaving_job_missing_from_the_changes_has_left_the_queue():
    cache = {"gone": JobInfo("7.0", "gone", REMOVED), "idle": JobInfo("7.1", "idle", IDLE)}
    merge_changes(cache, QueryResult({}, 5))
    assert list(cache) == ["idle"]


def test_jobs_this_gateway_removed_are_expected_to_leave():
    cache = {"a": JobInfo("7.0", "a", RUNNING)}
    mark_removed(cache, ["a", "not cached"])
    assert cache == {"a": JobInfo("7.0", "a", REMOVED)}


# -- the lease renewal's count ------------------------------------------------------------
CACHE = {"a": JobInfo("7.0", "a", IDLE), "b": JobInfo("7.1", "b", REMOVED)}


@pytest.mark.parametrize("matched", [1, 2])
def test_a_count_is_plausible_with_or_without_the_leaving_jobs(matched):
    assert count_is_plausible(matched, CACHE, removed=[], submitted=0)


def test_a_count_below_the_jobs_not_leaving_means_jobs_left_unseen():
    assert not count_is_plausible(0, CACHE, removed=[], submitted=0)


def test_jobs_removed_since_the_query_may_be_gone_from_the_count():
    assert count_is_plausible(0, CACHE, removed=["a"], submitted=0)


def test_jobs_submitted_since_the_query_may_be_in_the_count():
    assert count_is_plausible(4, CACHE, removed=[], submitted=2)
    assert not count_is_plausible(3, CACHE, removed=[], submitted=0)


def test_a_schedd_that_gives_no_count_needs_full_queries():
    assert not count_is_plausible(None, CACHE, removed=[], submitted=0)


# -- the launcher's periods -----------------------------------------------------------------
class ClockedSchedd:
    """An in-memory schedd: real ClassAds and constraints, a settable clock (``now``)."""

    def __init__(self, workers: list[str]) -> None:
        self.now = 100
        self.ads = [ad(i, w, entered=self.now - 10) for i, w in enumerate(workers)]
        self.answers: list[list[str]] = []  # worker names each query returned

    def query(self, constraint, projection):
        expr = classad2.ExprTree(str(constraint))
        out = []
        for a in self.ads:
            if expr.eval(a) is True:
                copy = classad2.ClassAd({k: a[k] for k in a if k in projection})
                copy["ServerTime"] = self.now
                out.append(copy)
        self.answers.append([a["DaskGatewayWorker"] for a in out])
        return out

    def edit(self, constraint, attr, value):
        expr = classad2.ExprTree(str(constraint))
        return sum(1 for a in self.ads if expr.eval(a) is True)

    def act(self, action, spec, reason):
        ids = set(spec) if isinstance(spec, list) else None
        self.ads = [a for a in self.ads if ids is not None and f"7.{a['ProcId']}" not in ids]

    def set_status(self, worker: str, status: int, **extra) -> None:
        for a in self.ads:
            if a["DaskGatewayWorker"] == worker:
                a["JobStatus"] = status
                a["EnteredCurrentStatus"] = self.now
                a.update(extra)


def worker(name: str, proc: int) -> SimpleNamespace:
    cluster = SimpleNamespace(name="c")
    return SimpleNamespace(
        name=name, cluster=cluster, state={"job_id": f"7.{proc}", "submitted": 0}
    )


@pytest.fixture
async def periods(tmp_path):
    schedd = ClockedSchedd(["a", "b", "c"])
    launcher = HTCondorLauncher(
        schedd_factory=lambda: schedd,
        staging_directory=str(tmp_path),
        status_period=3600,
        gateway_id="gw",
    )
    await launcher.setup(launcher_context(launcher, records=known(["c"], ["a", "b", "c"])))
    await launcher.refresh()  # the first query reads every job
    schedd.now += 5
    yield schedd, launcher
    await launcher.cleanup()


async def test_a_period_without_changes_reads_no_job_and_keeps_the_cache(periods):
    schedd, launcher = periods
    await launcher.refresh()
    assert schedd.answers == [["a", "b", "c"], []]
    assert sorted(launcher.jobs) == ["a", "b", "c"]


async def test_a_period_reads_only_the_job_that_changed(periods):
    schedd, launcher = periods
    schedd.set_status("b", HELD, HoldReason="out of disk")
    await launcher.refresh()
    assert schedd.answers[-1] == ["b"]
    [check] = await launcher.check_workers([worker("b", 1)])
    assert (check.phase, check.reason) == (Phase.FAILED, "job held: out of disk")


async def test_a_job_that_left_unseen_is_found_by_the_next_full_query(periods):
    schedd, launcher = periods
    schedd.ads = [a for a in schedd.ads if a["DaskGatewayWorker"] != "c"]  # e.g. condor_rm
    await launcher.refresh()  # the lease renewal counts 2 jobs, the cache holds 3
    await launcher.refresh()
    assert schedd.answers[-1] == ["a", "b"]
    [check] = await launcher.check_workers([worker("c", 2)])
    assert check.phase == Phase.FAILED


async def test_jobs_the_gateway_removed_leave_the_cache_without_a_full_query(periods):
    schedd, launcher = periods
    await launcher.stop_workers([worker("a", 0)])
    await launcher.refresh()
    await launcher.refresh()
    assert schedd.answers[1:] == [[], []]
    assert sorted(launcher.jobs) == ["b", "c"]


async def test_every_status_full_period_the_query_reads_all_jobs(periods):
    schedd, launcher = periods
    launcher.status_full_period = 0
    await launcher.refresh()
    assert schedd.answers[-1] == ["a", "b", "c"]


async def test_a_schedd_without_server_time_is_always_queried_whole(tmp_path):
    schedd = ClockedSchedd(["a"])
    plain_query = schedd.query

    def query(constraint, projection):
        answer = plain_query(constraint, projection)
        for a in answer:
            del a["ServerTime"]
        return answer

    schedd.query = query
    launcher = HTCondorLauncher(
        schedd_factory=lambda: schedd,
        staging_directory=str(tmp_path),
        status_period=3600,
        gateway_id="gw",
    )
    await launcher.setup(launcher_context(launcher, records=known(["c"], ["a"])))
    try:
        await launcher.refresh()
        await launcher.refresh()
    finally:
        await launcher.cleanup()
    assert schedd.answers == [["a"], ["a"]]
