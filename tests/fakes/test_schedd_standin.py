"""The HTCondor schedd stand-in behaves like a schedd where the launcher can tell.

Every test starts its own stand-in daemon and stops it (and its jobs) before it ends.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import classad2
import htcondor2
import pytest

from tests.fakes.schedd import (
    Standin,
    StandinSchedd,
    leftover_job_pids,
    start_standin,
    wait_until,
)
from tests.fakes.schedd.quoting import (
    arguments_to_attr,
    environment_to_attr,
    join_v2_raw,
    parse_env_v2,
    split_v2_raw,
)

pytestmark = pytest.mark.timeout(60)

IDLE, RUNNING, REMOVED, COMPLETED, HELD = 1, 2, 3, 4, 5


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Standin]:
    """A stand-in with 2 slots, a fast policy tick and a short kill grace."""
    with start_standin(tmp_path, slots=2, tick=0.2, kill_grace=1.0) as s:
        yield s


def v2_args(*args: str) -> str:
    """A submit-file ``arguments`` value in the new (double-quoted) syntax."""
    return '"' + join_v2_raw(args).replace('"', '""') + '"'


def sh_job(script: str, **commands: str) -> htcondor2.Submit:
    """A submit description running ``/bin/sh -c script`` in place (no executable transfer)."""
    return htcondor2.Submit(
        {
            "executable": "/bin/sh",
            "transfer_executable": "false",
            "arguments": v2_args("-c", script),
            **commands,
        }
    )


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def read_pid(path: Path) -> int:
    """Wait for a job to write its pid into ``path``."""
    wait_until(lambda: path.exists() and path.read_text().strip(), 10, what=str(path))
    return int(path.read_text())


def status_of(schedd: StandinSchedd, cluster: int, proc: int = 0) -> int | None:
    """JobStatus of one job, or None once it left the queue."""
    ads = schedd.query(f"ClusterId == {cluster} && ProcId == {proc}", ["JobStatus"])
    return int(ads[0]["JobStatus"]) if ads else None


def history_ad(standin: Standin, cluster: int, proc: int = 0) -> classad2.ClassAd:
    """The ad of a job that left the queue (waits for it)."""

    def find() -> classad2.ClassAd | None:
        for ad in standin.control.history():
            if ad["ClusterId"] == cluster and ad["ProcId"] == proc:
                return ad
        return None

    return wait_until(find, 10, what=f"job {cluster}.{proc} to leave the queue")


# --- pure helpers ------------------------------------------------------------------------------


def test_v2_arguments_and_environment_round_trip_htcondor_quoting() -> None:
    assert split_v2_raw("a 'b c' 'it''s' x'y z'w ''") == ["a", "b c", "it's", "xy zw", ""]
    assert arguments_to_attr('"-c \'echo ""hi""\' 3"') == ("Arguments", "-c 'echo \"hi\"' 3")
    assert arguments_to_attr("old  style args") == ("Args", "old style args")
    attr, raw = environment_to_attr("\"A=1 B='x y' C=\"")
    assert attr == "Environment"
    assert parse_env_v2(raw) == {"A": "1", "B": "x y", "C": ""}
    assert environment_to_attr("A=1;B=2") == ("Env", "A=1;B=2")


# --- submit --------------------------------------------------------------------------------------


def test_one_submit_with_itemdata_makes_one_ad_per_item_with_custom_attributes(
    standin: Standin,
) -> None:
    schedd = standin.client_factory()
    description = htcondor2.Submit(
        textwrap.dedent(
            """\
            executable = /bin/sleep
            transfer_executable = false
            arguments = "30 $(worker_name)"
            environment = "WORKER=$(worker_name) SPACED='a b'"
            request_cpus = 2
            request_memory = 2GB
            request_gpus = 1
            +DaskGatewayCluster = "abc"
            MY.DaskGatewayWorker = "$(worker_name)"
            hold = true
            """
        )
    )
    names = [{"worker_name": f"dask-worker-{i}"} for i in range(3)]
    result = schedd.submit(description, itemdata=iter(names))

    assert isinstance(result, htcondor2.SubmitResult)
    assert (result.num_procs(), result.first_proc()) == (3, 0)
    assert result.clusterad()["DaskGatewayCluster"] == "abc"
    ads = schedd.query(f"ClusterId == {result.cluster()}")
    assert [ad["ProcId"] for ad in ads] == [0, 1, 2]
    assert all(isinstance(ad, classad2.ClassAd) for ad in ads)
    for ad, item in zip(ads, names, strict=True):
        assert ad["DaskGatewayCluster"] == "abc"
        assert ad["DaskGatewayWorker"] == item["worker_name"]
        assert ad["Arguments"] == f"30 {item['worker_name']}"
        assert parse_env_v2(ad["Environment"]) == {"WORKER": item["worker_name"], "SPACED": "a b"}
        assert (ad["RequestCpus"], ad["RequestMemory"], ad["RequestGpus"]) == (2, 2048, 1)
        assert (ad["JobStatus"], ad["HoldReasonCode"]) == (HELD, 15)
        assert ad["Cmd"] == "/bin/sleep" and ad["Owner"] and ad["QDate"] > 0
    counters = standin.control.counters()
    assert counters["submit"] == 1
    assert counters["submit_procs"] == [3]


def test_queue_statement_and_live_macros_are_expanded_by_real_submit(standin: Standin) -> None:
    schedd = standin.client_factory()
    description = htcondor2.Submit(
        textwrap.dedent(
            """\
            executable = /bin/true
            hold = true
            MY.Tag = "$(Cluster).$(Process)/$(Step)/$(name)"
            queue 2 name in (x, y)
            """
        )
    )
    cluster = schedd.submit(description).cluster()
    tags = [ad["Tag"] for ad in schedd.query(f"ClusterId == {cluster}", ["Tag"])]
    assert tags == [f"{cluster}.0/0/x", f"{cluster}.1/1/x", f"{cluster}.2/0/y", f"{cluster}.3/1/y"]
    with pytest.raises(ValueError, match="mutually exclusive"):
        schedd.submit(description, count=2, queue="1")


# --- running jobs --------------------------------------------------------------------------------


def test_job_runs_a_real_command_with_transferred_input_and_completes_with_its_exit_code(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    (tmp_path / "input.txt").write_text("from the input file\n")
    script = (
        "cat input.txt > result.txt; echo $GREETING >> result.txt; "
        'test -f "$_CONDOR_JOB_AD" && grep -q DaskGatewayWorker "$_CONDOR_JOB_AD" '
        '&& echo job-ad-ok >> result.txt; test "$_CONDOR_SCRATCH_DIR" = "$PWD" '
        "&& echo scratch-ok >> result.txt; env > env.txt; exit 3"
    )
    description = sh_job(
        script,
        initialdir=str(tmp_path),
        transfer_input_files="input.txt",
        transfer_output_files="result.txt, env.txt",
        environment="\"GREETING='hello world'\"",
        output="out.txt",
        **{"MY.DaskGatewayWorker": '"w0"'},
    )
    cluster = schedd.submit(description).cluster()

    ad = history_ad(standin, cluster)
    assert (ad["JobStatus"], ad["ExitCode"], ad["ExitBySignal"]) == (COMPLETED, 3, False)
    assert ad["NumJobStarts"] == 1 and ad["CompletionDate"] > 0
    result = (tmp_path / "result.txt").read_text().splitlines()
    assert result == ["from the input file", "hello world", "job-ad-ok", "scratch-ok"]
    env = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines())
    assert env["GREETING"] == "hello world"
    assert {"PATH", "HOME", "LANG", "_CONDOR_SCRATCH_DIR", "_CONDOR_JOB_AD"} <= env.keys()
    assert "PYTEST_CURRENT_TEST" not in env  # not the daemon's environment
    assert schedd.query(f"ClusterId == {cluster}") == []


def test_extra_jobs_stay_idle_until_a_slot_frees(tmp_path: Path) -> None:
    with start_standin(tmp_path, slots=1, kill_grace=1.0) as (client_factory, control):
        schedd = client_factory()
        cluster = schedd.submit(sh_job("sleep 30"), count=2).cluster()
        wait_until(lambda: status_of(schedd, cluster, 0) == RUNNING, 10)
        time.sleep(0.3)
        assert status_of(schedd, cluster, 1) == IDLE
        schedd.act(htcondor2.JobAction.Remove, f"{cluster}.0")
        wait_until(lambda: status_of(schedd, cluster, 1) == RUNNING, 10)
        control.set_slots(2)
        second = schedd.submit(sh_job("sleep 30")).cluster()
        wait_until(lambda: status_of(schedd, second) == RUNNING, 10)


def test_start_latency_keeps_a_job_idle_for_a_while(tmp_path: Path) -> None:
    with start_standin(tmp_path, start_latency=1.0) as (client_factory, _control):
        schedd = client_factory()
        submitted = time.monotonic()
        cluster = schedd.submit(sh_job("sleep 30")).cluster()
        assert status_of(schedd, cluster) == IDLE
        wait_until(lambda: status_of(schedd, cluster) == RUNNING, 10)
        assert time.monotonic() - submitted >= 0.9


def test_query_evaluates_constraints_with_classad2_and_projects(standin: Standin) -> None:
    schedd = standin.client_factory()
    for cluster_name, count in (("a", 2), ("b", 1)):
        description = htcondor2.Submit(
            {"executable": "/bin/true", "hold": "true", "+DaskGatewayCluster": f'"{cluster_name}"'}
        )
        schedd.submit(description, count=count)

    ads = schedd.query('DaskGatewayCluster == "a"', ["ClusterId", "ProcId", "DaskGatewayCluster"])
    assert [(ad["ProcId"], ad["DaskGatewayCluster"]) for ad in ads] == [(0, "a"), (1, "a")]
    assert all(set(ad.keys()) == {"ClusterId", "ProcId", "DaskGatewayCluster"} for ad in ads)
    expr = classad2.ExprTree('DaskGatewayCluster == "b" && JobStatus == 5')
    assert len(schedd.query(expr, ["ClusterId"])) == 1
    assert schedd.query("NoSuchAttribute == 1") == []  # UNDEFINED is not a match
    assert len(schedd.query(limit=2)) == 2
    assert schedd.query("true", ["ClusterId"], callback=lambda ad: ad["ClusterId"]) == [1, 1, 2]


# --- act -----------------------------------------------------------------------------------------


def test_remove_by_constraint_kills_the_job_process_group(standin: Standin, tmp_path: Path) -> None:
    schedd = standin.client_factory()
    script = f"sleep 60 & echo $! > {tmp_path}/child.pid; echo $$ > {tmp_path}/job.pid; wait"
    cluster = schedd.submit(sh_job(script, **{"+DaskGatewayCluster": '"rm-me"'})).cluster()
    job_pid, child_pid = read_pid(tmp_path / "job.pid"), read_pid(tmp_path / "child.pid")

    totals = schedd.act(htcondor2.JobAction.Remove, 'DaskGatewayCluster == "rm-me"', "scale down")
    assert (totals["TotalSuccess"], totals["TotalJobAds"]) == (1, 1)
    wait_until(lambda: not alive(job_pid) and not alive(child_pid), 10)
    ad = history_ad(standin, cluster)
    assert ad["JobStatus"] == REMOVED
    assert ad["RemoveReason"].startswith("scale down (by user ")
    assert schedd.query(f"ClusterId == {cluster}") == []
    again = schedd.act(htcondor2.JobAction.Remove, [f"{cluster}.0"])
    assert again["TotalNotFound"] == 1


def test_remove_escalates_to_sigkill_when_the_job_ignores_sigterm(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    script = f"trap '' TERM; echo $$ > {tmp_path}/job.pid; while true; do sleep 0.1; done"
    cluster = schedd.submit(sh_job(script)).cluster()
    pid = read_pid(tmp_path / "job.pid")
    schedd.act(htcondor2.JobAction.Remove, cluster)
    time.sleep(0.5)
    assert alive(pid) and status_of(schedd, cluster) == REMOVED  # still dying: status 3
    wait_until(lambda: not alive(pid) and status_of(schedd, cluster) is None, 10)


def test_hold_with_reason_stops_the_job_and_release_requeues_it(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    pid_file = tmp_path / "job.pid"
    cluster = schedd.submit(sh_job(f"echo $$ > {pid_file}; sleep 60")).cluster()
    pid = read_pid(pid_file)

    totals = schedd.act(htcondor2.JobAction.Hold, [f"{cluster}.0"], reason="lease lost")
    assert totals["TotalSuccess"] == 1
    ad = schedd.query(f"ClusterId == {cluster}")[0]
    assert (ad["JobStatus"], ad["HoldReasonCode"]) == (HELD, 1)
    assert ad["HoldReason"].startswith("lease lost (by user ")
    wait_until(lambda: not alive(pid), 10)
    assert schedd.act(htcondor2.JobAction.Hold, str(cluster))["TotalAlreadyDone"] == 1

    pid_file.unlink()
    schedd.act(htcondor2.JobAction.Release, classad2.ExprTree(f"ClusterId == {cluster}"))
    read_pid(pid_file)
    ad = schedd.query(f"ClusterId == {cluster}")[0]
    assert (ad["JobStatus"], ad["NumJobStarts"]) == (RUNNING, 2)
    assert "HoldReason" not in ad and ad["LastHoldReasonCode"] == 1


def test_a_missing_executable_puts_the_job_on_hold(standin: Standin, tmp_path: Path) -> None:
    schedd = standin.client_factory()
    missing = str(tmp_path / "no-such-program")
    in_place = htcondor2.Submit({"executable": missing, "transfer_executable": "false"})
    transferred = htcondor2.Submit({"executable": missing})
    first = schedd.submit(in_place).cluster()
    second = schedd.submit(transferred).cluster()

    wait_until(lambda: status_of(schedd, first) == HELD and status_of(schedd, second) == HELD, 10)
    held = {ad["ClusterId"]: ad for ad in schedd.query("JobStatus == 5")}
    assert held[first]["HoldReasonCode"] == 6  # FailedToCreateProcess
    assert f"Failed to execute '{missing}'" in held[first]["HoldReason"]
    assert held[second]["HoldReasonCode"] == 13  # TransferInputError
    assert missing in held[second]["HoldReason"]


def test_an_executable_the_kernel_refuses_puts_the_job_on_hold(
    standin: Standin, tmp_path: Path
) -> None:
    program = tmp_path / "not-a-program"
    program.write_bytes(b"\x00\x01 neither ELF nor #!")
    program.chmod(0o755)
    description = htcondor2.Submit({"executable": str(program), "transfer_executable": "false"})
    cluster = standin.client_factory().submit(description).cluster()

    ad = wait_until(lambda: held_ad(standin, cluster), 10, what="the job to be held")
    assert (ad["HoldReasonCode"], ad["HoldReasonSubCode"]) == (6, 8)  # ENOEXEC
    assert f"Failed to execute '{program}'" in ad["HoldReason"]


def held_ad(standin: Standin, cluster: int) -> classad2.ClassAd | None:
    ads = standin.client_factory().query(f"ClusterId == {cluster} && JobStatus == {HELD}")
    return ads[0] if ads else None


# --- edit and policy -----------------------------------------------------------------------------


def test_edit_sets_expressions_and_refuses_what_a_schedd_refuses(standin: Standin) -> None:
    schedd = standin.client_factory()
    cluster = schedd.submit(htcondor2.Submit({"executable": "/bin/true", "hold": "true"})).cluster()
    assert schedd.edit(f"{cluster}.0", "DaskGatewayNote", '"text"') == 1
    assert schedd.edit(cluster, "Twice", classad2.ExprTree("2 * 21")) == 1
    ad = schedd.query(f"ClusterId == {cluster}", ["DaskGatewayNote", "Twice"])[0]
    assert (ad["DaskGatewayNote"], ad.eval("Twice")) == ("text", 42)
    assert schedd.edit('DaskGatewayNote == "nothing"', "X", "1") == 0
    with pytest.raises(htcondor2.HTCondorException, match="Unable to edit job"):
        schedd.edit(f"{cluster}.7", "X", "1")
    with pytest.raises(htcondor2.HTCondorException):
        schedd.edit(cluster, "JobStatus", "2")


def test_an_expired_lease_makes_periodic_remove_remove_the_job(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    description = sh_job(
        f"echo $$ > {tmp_path}/job.pid; sleep 60",
        periodic_remove="time() > DaskGatewayLeaseExpires",
        **{"+DaskGatewayLeaseExpires": str(int(time.time()) + 600)},
    )
    cluster = schedd.submit(description).cluster()
    pid = read_pid(tmp_path / "job.pid")
    time.sleep(0.5)  # a few policy ticks with a valid lease
    assert status_of(schedd, cluster) == RUNNING

    assert schedd.edit(cluster, "DaskGatewayLeaseExpires", str(int(time.time()) - 1)) == 1
    ad = history_ad(standin, cluster)
    assert ad["JobStatus"] == REMOVED
    assert "PeriodicRemove" in ad["RemoveReason"] and "evaluated to TRUE" in ad["RemoveReason"]
    wait_until(lambda: not alive(pid), 10)


def test_an_undefined_periodic_remove_holds_the_job_like_htcondor(standin: Standin) -> None:
    schedd = standin.client_factory()
    description = sh_job("sleep 60", periodic_remove="time() > NoLeaseAttribute")
    cluster = schedd.submit(description).cluster()
    wait_until(lambda: status_of(schedd, cluster) == HELD, 10)
    ad = schedd.query(f"ClusterId == {cluster}")[0]
    assert ad["HoldReasonCode"] == 5  # JobPolicyUndefined
    assert "evaluated to UNDEFINED" in ad["HoldReason"]


def test_jobs_outlive_a_killed_submitter_and_their_lease_removes_them(
    standin: Standin, tmp_path: Path
) -> None:
    submitter_code = textwrap.dedent(
        f"""
        import sys, time, htcondor2
        from tests.fakes.schedd import StandinSchedd
        schedd = StandinSchedd({str(standin.control.socket_path)!r})
        description = htcondor2.Submit({{
            "executable": "/bin/sleep", "transfer_executable": "false", "arguments": "60",
            "+DaskGatewayLeaseExpires": str(int(time.time()) + 3),
            "periodic_remove": "time() > DaskGatewayLeaseExpires",
        }})
        print(schedd.submit(description).cluster(), flush=True)
        time.sleep(60)
        """
    )
    repo_root = Path(__file__).resolve().parents[2]
    submitter = subprocess.Popen(
        [sys.executable, "-c", submitter_code], cwd=repo_root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert submitter.stdout is not None
        cluster = int(submitter.stdout.readline())
        schedd = standin.client_factory()
        wait_until(lambda: status_of(schedd, cluster) == RUNNING, 10)
    finally:
        submitter.send_signal(signal.SIGKILL)
        submitter.wait(timeout=10)
    assert status_of(schedd, cluster) == RUNNING  # the schedd, not the submitter, owns the job
    ad = history_ad(standin, cluster)
    assert "PeriodicRemove" in ad["RemoveReason"]


# --- faults and observability --------------------------------------------------------------------


def test_an_unavailable_schedd_raises_htcondor_exception_and_recovers(standin: Standin) -> None:
    schedd = standin.client_factory()
    standin.control.set_unavailable(1.0)
    started = time.monotonic()
    with pytest.raises(htcondor2.HTCondorException, match="Failed to fetch ads from schedd"):
        schedd.query()
    with pytest.raises(htcondor2.HTCondorException, match="Failed to connect to schedd"):
        schedd.submit(htcondor2.Submit({"executable": "/bin/true", "hold": "true"}))
    with pytest.raises(htcondor2.HTCondorException, match="Error when performing action"):
        schedd.act(htcondor2.JobAction.Remove, "true")
    with pytest.raises(htcondor2.HTCondorException, match="Failed to connect to schedd"):
        schedd.edit("true", "X", "1")
    assert time.monotonic() - started < 1.0  # failing fast, not hanging
    counters = standin.control.counters()
    assert counters["refused"] == {"submit": 1, "query": 1, "act": 1, "edit": 1}
    assert counters["query"] == 0
    assert wait_until(lambda: _answers(schedd), 5) is True


def _answers(schedd: StandinSchedd) -> bool:
    try:
        schedd.query()
    except htcondor2.HTCondorException:
        return False
    return True


def test_a_hung_schedd_makes_calls_time_out_with_htcondor_exception(standin: Standin) -> None:
    schedd = standin.client_factory(timeout=0.5)
    standin.control.set_hang(10.0)
    started = time.monotonic()
    with pytest.raises(htcondor2.HTCondorException, match="timed out"):
        schedd.query()
    assert time.monotonic() - started < 2.0
    standin.control.clear_faults()
    assert schedd.query() == []


def test_call_counters_count_calls_and_procs_per_submit_and_reset(standin: Standin) -> None:
    schedd = standin.client_factory()
    description = htcondor2.Submit({"executable": "/bin/true", "hold": "true"})
    schedd.submit(description, count=4)
    schedd.submit(description, itemdata=iter(["a", "b"]))
    schedd.query()
    schedd.query("false")
    schedd.edit("true", "X", "1")
    schedd.act(htcondor2.JobAction.Remove, "true")
    counters = standin.control.counters()
    assert {k: counters[k] for k in ("submit", "query", "act", "edit")} == {
        "submit": 2,
        "query": 2,
        "act": 1,
        "edit": 1,
    }
    assert counters["submit_procs"] == [4, 2]
    assert len(standin.control.jobs()) == 6  # all removed: history keeps them
    standin.control.reset_counters()
    assert standin.control.counters()["submit_procs"] == []


def test_stopping_the_standin_kills_its_running_jobs(tmp_path: Path) -> None:
    with start_standin(tmp_path) as (client_factory, control):
        schedd = client_factory()
        schedd.submit(sh_job(f"sleep 60 & echo $$ > {tmp_path}/job.pid; wait"))
        pid = read_pid(tmp_path / "job.pid")
        daemon_pid = control.ping()["pid"]
    assert not alive(pid)
    assert not alive(daemon_pid)
    assert leftover_job_pids(tmp_path / "standin") == []
