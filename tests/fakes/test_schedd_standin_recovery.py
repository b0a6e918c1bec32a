"""A SIGKILLed stand-in schedd recovers its queue from its job queue log, as a real schedd.

Each test SIGKILLs the daemon (``Standin.kill_daemon``), so nothing of its clean-up runs,
and starts it again on the same workdir and socket (``Standin.restart``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import htcondor2
import pytest

from tests.fakes.schedd import Standin, StandinSchedd, start_standin, wait_until
from tests.fakes.test_schedd_standin import (
    COMPLETED,
    HELD,
    IDLE,
    RUNNING,
    alive,
    history_ad,
    read_pid,
    sh_job,
    status_of,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Standin]:
    """A stand-in with 2 slots, a fast policy tick and a short kill grace."""
    with start_standin(tmp_path, slots=2, tick=0.2, kill_grace=1.0) as s:
        yield s


def job_log(standin: Standin) -> Path:
    assert standin.control.workdir is not None
    return standin.control.workdir / "spool" / "job_queue.log"


def crash_and_restart(standin: Standin, down_for: float = 0.0) -> None:
    """SIGKILL the daemon, leave it down for ``down_for`` seconds, start it again."""
    standin.kill_daemon()
    time.sleep(down_for)
    standin.restart()


def ad_of(schedd: StandinSchedd, cluster: int, proc: int = 0) -> dict:
    [ad] = schedd.query(f"ClusterId == {cluster} && ProcId == {proc}")
    return dict(ad)


def test_cluster_ids_continue_after_the_highest_ever_used(standin: Standin) -> None:
    schedd = standin.client_factory()
    first = schedd.submit(sh_job("exit 0")).cluster()
    second = schedd.submit(sh_job("exit 0")).cluster()
    wait_until(lambda: schedd.query(f"ClusterId == {second}") == [], 10)  # both left the queue

    crash_and_restart(standin)

    assert schedd.submit(sh_job("exit 0")).cluster() == second + 1 > first


def test_idle_jobs_stay_idle_with_their_ids_and_ads(standin: Standin) -> None:
    schedd = standin.client_factory()
    standin.control.set_slots(0)
    cluster = schedd.submit(sh_job("sleep 30", **{"My.DaskGatewayWorker": '"w"'}), count=2)
    before = [dict(ad) for ad in schedd.query(f"ClusterId == {cluster.cluster()}")]

    crash_and_restart(standin)

    after = [dict(ad) for ad in schedd.query(f"ClusterId == {cluster.cluster()}")]
    assert [a["JobStatus"] for a in after] == [IDLE, IDLE]
    for ad in (*before, *after):
        ad.pop("ServerTime")
    assert after == before


def test_a_running_job_keeps_running_and_is_reconnected(standin: Standin, tmp_path: Path) -> None:
    schedd = standin.client_factory()
    cluster = schedd.submit(sh_job(f"echo $$ > {tmp_path}/pid; sleep 60")).cluster()
    pid = read_pid(tmp_path / "pid")

    crash_and_restart(standin, down_for=0.5)

    assert alive(pid)  # the crash did not touch the job
    ad = ad_of(schedd, cluster)
    assert (ad["JobStatus"], ad["NumJobStarts"], ad["NumJobReconnects"]) == (RUNNING, 1, 1)
    assert standin.control.ping()["running"] == 1


def test_a_reconnected_job_s_later_exit_is_recorded(standin: Standin, tmp_path: Path) -> None:
    schedd = standin.client_factory()
    go = tmp_path / "go"
    script = f"echo $$ > {tmp_path}/pid; while ! test -e {go}; do sleep 0.05; done; exit 7"
    cluster = schedd.submit(sh_job(script)).cluster()
    read_pid(tmp_path / "pid")

    crash_and_restart(standin)
    go.touch()

    ad = history_ad(standin, cluster)
    assert (ad["JobStatus"], ad["ExitCode"], ad["NumJobStarts"]) == (COMPLETED, 7, 1)


def test_a_job_that_exited_while_the_schedd_was_down_completes_with_its_exit_code(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    go = tmp_path / "go"
    script = f"echo $$ > {tmp_path}/pid; while ! test -e {go}; do sleep 0.05; done; exit 5"
    cluster = schedd.submit(sh_job(script)).cluster()
    pid = read_pid(tmp_path / "pid")

    standin.kill_daemon()
    go.touch()
    wait_until(lambda: not alive(pid), 10, what="the job to exit")
    standin.restart()

    ad = history_ad(standin, cluster)
    assert (ad["JobStatus"], ad["ExitCode"], ad["NumJobStarts"]) == (COMPLETED, 5, 1)


def test_an_exit_the_crash_kept_out_of_the_log_is_recorded_once_not_run_again(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    go = tmp_path / "go"
    script = f"echo $$ >> {tmp_path}/pids; while ! test -e {go}; do sleep 0.05; done; exit 3"
    cluster = schedd.submit(sh_job(script)).cluster()
    read_pid_lines(tmp_path / "pids", 1)
    standin.control.crash_before_logging_an_exit()
    go.touch()
    assert standin.daemon is not None
    standin.daemon.wait(timeout=10)  # it died with the exit known and not logged

    standin.restart()

    ad = history_ad(standin, cluster)
    assert (ad["JobStatus"], ad["ExitCode"], ad["NumJobStarts"]) == (COMPLETED, 3, 1)
    time.sleep(0.5)
    assert len(read_pid_lines(tmp_path / "pids", 1)) == 1  # never started again


def test_a_job_whose_starter_died_while_the_schedd_was_down_runs_again(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    cluster = schedd.submit(sh_job(f"echo $$ >> {tmp_path}/pids; sleep 60")).cluster()
    [pid] = map(int, read_pid_lines(tmp_path / "pids", 1))

    standin.kill_daemon()
    os.killpg(os.getpgid(pid), signal.SIGKILL)  # the execute node is lost: starter and job
    wait_until(lambda: not alive(pid), 10)
    standin.restart()

    second = int(read_pid_lines(tmp_path / "pids", 2)[1])
    assert second != pid and alive(second)
    ad = ad_of(schedd, cluster)
    assert (ad["JobStatus"], ad["NumJobStarts"]) == (RUNNING, 2)
    assert "ExitCode" not in ad  # not an exit of the job: a lost attempt


def read_pid_lines(path: Path, count: int) -> list[str]:
    """Wait for ``count`` pids, one per line, in ``path``."""

    def lines() -> list[str] | None:
        found = path.read_text().split() if path.exists() else []
        return found if len(found) >= count else None

    return wait_until(lines, 10, what=f"{count} pids in {path}")


def test_a_job_whose_lease_expired_while_the_schedd_was_down_is_killed_and_runs_again(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    description = sh_job(f"echo $$ >> {tmp_path}/pids; sleep 60", job_lease_duration="1")
    cluster = schedd.submit(description).cluster()
    [pid] = map(int, read_pid_lines(tmp_path / "pids", 1))

    crash_and_restart(standin, down_for=2.5)

    wait_until(lambda: not alive(pid), 5, what="the job whose lease expired to be killed")
    read_pid_lines(tmp_path / "pids", 2)
    assert ad_of(schedd, cluster)["NumJobStarts"] == 2


def test_a_starter_the_log_does_not_name_is_killed_so_no_job_runs_twice(
    standin: Standin, tmp_path: Path
) -> None:
    schedd = standin.client_factory()
    standin.control.set_slots(0)
    cluster = schedd.submit(sh_job(f"echo $$ >> {tmp_path}/pids; sleep 60")).cluster()
    logged_idle = job_log(standin).read_bytes()
    standin.control.set_slots(1)
    [pid] = map(int, read_pid_lines(tmp_path / "pids", 1))
    standin.kill_daemon()
    job_log(standin).write_bytes(logged_idle)  # the crash came before "started" was logged

    standin.restart()

    wait_until(lambda: not alive(pid), 5, what="the unknown starter's job to be killed")
    second = int(read_pid_lines(tmp_path / "pids", 2)[1])
    assert alive(second) and ad_of(schedd, cluster)["NumJobStarts"] == 1


def test_removed_jobs_stay_removed(standin: Standin) -> None:
    schedd = standin.client_factory()
    cluster = schedd.submit(sh_job("sleep 60"), count=2).cluster()
    wait_until(lambda: status_of(schedd, cluster, 1) == RUNNING, 10)
    schedd.act(htcondor2.JobAction.Remove, [f"{cluster}.0"])
    history_ad(standin, cluster, 0)

    crash_and_restart(standin)

    assert [int(a["ProcId"]) for a in schedd.query(f"ClusterId == {cluster}")] == [1]
    assert history_ad(standin, cluster, 0)["RemoveReason"].startswith("Python-initiated")


def test_held_jobs_stay_held(standin: Standin) -> None:
    schedd = standin.client_factory()
    cluster = schedd.submit(sh_job("sleep 60")).cluster()
    schedd.act(htcondor2.JobAction.Hold, str(cluster), reason=("by the test", 7))

    crash_and_restart(standin)

    ad = ad_of(schedd, cluster)
    assert (ad["JobStatus"], ad["HoldReasonCode"], ad["HoldReasonSubCode"]) == (HELD, 1, 7)
    time.sleep(0.5)  # a held job is not matched again
    assert status_of(schedd, cluster) == HELD


def test_lease_edits_survive_a_crash(standin: Standin) -> None:
    schedd = standin.client_factory()
    standin.control.set_slots(0)
    cluster = schedd.submit(sh_job("sleep 60"), count=3).cluster()
    assert schedd.edit(f"ClusterId == {cluster}", "DaskGatewayLeaseExpires", "12345") == 3

    crash_and_restart(standin)

    leases = schedd.query(f"ClusterId == {cluster}", ["DaskGatewayLeaseExpires"])
    assert [a["DaskGatewayLeaseExpires"] for a in leases] == [12345] * 3


def test_a_torn_last_log_line_is_ignored(standin: Standin) -> None:
    schedd = standin.client_factory()
    standin.control.set_slots(0)
    cluster = schedd.submit(sh_job("sleep 60")).cluster()
    standin.kill_daemon()
    with open(job_log(standin), "ab") as log:  # a transaction the crash cut short
        log.write(b'{"edits":[["Torn","1",["' + f"{cluster}.0".encode())

    standin.restart()

    assert status_of(schedd, cluster) == IDLE
    assert "Torn" not in schedd.query(f"ClusterId == {cluster}")[0]
    assert job_log(standin).read_bytes().endswith(b"\n")  # compaction dropped it


def test_the_log_is_compacted_on_start(standin: Standin) -> None:
    schedd = standin.client_factory()
    standin.control.set_slots(0)
    cluster = schedd.submit(sh_job("sleep 60")).cluster()
    for lease in range(50):
        schedd.edit(str(cluster), "DaskGatewayLeaseExpires", str(lease))
    grown = len(job_log(standin).read_bytes().splitlines())

    crash_and_restart(standin)

    lines = [json.loads(line) for line in job_log(standin).read_bytes().splitlines()]
    assert grown > 50 and len(lines) == 2  # the next ClusterId, and the one job
    [ad] = schedd.query(str(cluster), ["DaskGatewayLeaseExpires"])
    assert ad["DaskGatewayLeaseExpires"] == 49


def test_a_restarted_standin_answers_the_htcondor2_binding_as_before(standin: Standin) -> None:
    schedd = standin.client_factory()
    standin.control.set_slots(1)
    cluster = schedd.submit(sh_job("sleep 60"), itemdata=iter([{"w": "a"}, {"w": "b"}]))
    wait_until(lambda: status_of(schedd, cluster.cluster(), 0) == RUNNING, 10)
    projection = ["ClusterId", "ProcId", "JobStatus", "Cmd", "Arguments", "RemoteHost"]
    before = schedd.query(f"ClusterId == {cluster.cluster()}", projection)

    crash_and_restart(standin)

    after = schedd.query(f"ClusterId == {cluster.cluster()}", projection)
    assert [dict(a) for a in after] == [dict(b) for b in before]
    totals = schedd.act(htcondor2.JobAction.Remove, f"ClusterId == {cluster.cluster()}")
    assert (totals["TotalSuccess"], totals["TotalNotFound"]) == (2, 0)


def test_stopping_a_restarted_standin_kills_its_reconnected_jobs(tmp_path: Path) -> None:
    with start_standin(tmp_path, kill_grace=1.0) as standin:
        schedd = standin.client_factory()
        schedd.submit(sh_job(f"echo $$ > {tmp_path}/pid; sleep 60"))
        pid = read_pid(tmp_path / "pid")
        crash_and_restart(standin)
        assert alive(pid)
        standin.stop()  # the daemon's own shutdown, not the launcher's safety net
        wait_until(lambda: not alive(pid), 5, what="the reconnected job to be killed")
