"""The chaos benchmark's invariant checks catch what they are named for (they can fail)."""

from __future__ import annotations

from benchmarks.chaos_world import MAX_CORES, RUNNING, Live, Records, check_invariants

SUBMITTED = 2


def records(clusters=("c1",), workers=(("c1", "w1", RUNNING, "local"),)) -> Records:
    r = Records()
    for c in clusters:
        r.clusters[c] = {"user": "alice", "status": RUNNING, "target": RUNNING, "count": 1}
    for c, w, status, pool in workers:
        r.workers[(c, w)] = {"status": status, "target": RUNNING, "pool": pool}
    return r


def live(schedulers=("c1",), local=(("c1", "w1"),), jobs=(), strays=()) -> Live:
    return Live(set(schedulers), set(local), {j: 2 for j in jobs}, list(strays))


USAGE = {"clusters": 1, "workers": 1, "cores": 2.0}


def test_what_runs_as_recorded_holds_every_invariant():
    assert check_invariants(records(), live(), USAGE).holds


def test_a_worker_process_without_a_record_is_an_orphan():
    check = check_invariants(records(), live(local=[("c1", "w1"), ("c1", "w9")]), USAGE)
    assert check.orphans == ["worker c1/w9"]


def test_a_scheduler_of_a_stopped_cluster_is_an_orphan():
    check = check_invariants(records(), live(schedulers=["c1", "old"]), USAGE)
    assert check.orphans == ["scheduler of old"]


def test_a_job_process_no_longer_in_the_queue_is_an_orphan():
    check = check_invariants(records(), live(strays=["pid 42 of job 7.0"]), USAGE)
    assert check.orphans == ["stand-in pid 42 of job 7.0 (no longer in its queue)"]


def test_a_running_worker_record_without_its_job_is_a_ghost():
    recs = records(workers=[("c1", "w1", RUNNING, "local"), ("c1", "w2", RUNNING, "condor")])
    check = check_invariants(recs, live(), {**USAGE, "workers": 1})
    assert check.ghosts == ["worker c1/w2 is RUNNING without its condor process/job"]


def test_a_submitted_worker_not_yet_running_is_no_ghost():
    recs = records(workers=[("c1", "w1", RUNNING, "local"), ("c1", "w2", SUBMITTED, "condor")])
    assert check_invariants(recs, live(), USAGE).ghosts == []


def test_usage_that_differs_from_what_runs_is_a_quota_mismatch():
    check = check_invariants(records(), live(), {**USAGE, "workers": 2, "cores": 3.0})
    assert check.quota_mismatch == [
        "VO usage workers=2, live sum 1",
        "VO usage cores=3.0, live sum 2",
    ]


def test_more_cores_running_than_the_vo_allows_is_an_overshoot():
    many = [("c1", f"w{i}") for i in range(MAX_CORES)]
    check = check_invariants(records(), live(local=many), None)
    assert f"VO guests: {MAX_CORES + 1} cores run, max_cores={MAX_CORES}" in check.overshoot
