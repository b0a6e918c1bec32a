"""How processes, jobs and pods ended, in the words the analyst reads."""

from __future__ import annotations

import re

import pytest

from gateway_backend.launchers.exit_reasons import exit_text, with_log
from gateway_backend.launchers.htcondor_status import (
    COMPLETED,
    HELD,
    ended_text,
    held_text,
    parse_ads,
)
from gateway_backend.scheduler_reports import BadReport, parse_report


def test_a_sigkill_names_the_signal_and_the_usual_cause():
    text = exit_text(signum=9)
    assert text.startswith("was killed by signal 9 (SIGKILL): usually the system's out-of-memory")


def test_a_negative_return_code_is_a_signal():
    assert exit_text(-15) == "was killed by signal 15 (SIGTERM)"


def test_an_exit_code_and_an_unknown_end():
    assert exit_text(3) == "exited with code 3"
    assert exit_text() == "exited"


def test_the_last_log_lines_follow_the_reason_on_one_line():
    assert with_log("exited with code 1", "a\n\nb\nc\nd\n") == (
        "exited with code 1; last log lines: b | c | d"
    )
    assert with_log("exited", "") == "exited; no output"


def test_an_htcondor_hold_for_memory_reads_as_a_memory_kill():
    text = held_text("Job has gone over memory limit of 2048 megabytes.", 34)
    assert text.startswith("job held: killed for exceeding its memory limit (Job has gone")
    assert "worker_memory" in text
    assert held_text("Error from slot1: SHADOW failed", 12) == (
        "job held: Error from slot1: SHADOW failed"
    )


def test_an_htcondor_job_that_ended_says_its_exit_code_or_signal():
    assert ended_text({"ExitBySignal": False, "ExitCode": 2}) == "exited with code 2"
    assert ended_text({"ExitBySignal": True, "ExitSignal": 9}).startswith("was killed by signal 9")
    assert ended_text({}) == ""


def test_parsed_ads_carry_the_hold_code_and_the_exit():
    held = {"ClusterId": 1, "ProcId": 0, "JobStatus": HELD, "DaskGatewayWorker": "w1"}
    held |= {"HoldReason": "memory usage exceeded request_memory", "HoldReasonCode": 34}
    done = {"ClusterId": 1, "ProcId": 1, "JobStatus": COMPLETED, "DaskGatewayWorker": "w2"}
    done |= {"ExitBySignal": False, "ExitCode": 4}
    jobs = parse_ads([held, done]).jobs
    assert "killed for exceeding its memory limit" in jobs["w1"].check.reason
    assert jobs["w2"].ended == "exited with code 4"


def lost(tasks: list, memory_bytes) -> dict:
    return {"kind": "worker_lost", "worker": "w1", "tasks": tasks, "memory_bytes": memory_bytes}


def test_a_worker_lost_for_memory_names_its_task():
    report = parse_report(lost(["hog-1"], 300 * 2**20))
    assert report.level == "error"
    text = report.text()
    assert text.startswith("worker w1 was killed for exceeding its memory limit while running ")
    assert "task 'hog-1' (0.29 GiB in use; its nanny restarted it)" in text


def test_a_hostile_task_key_stays_one_bounded_line():
    report = parse_report(lost(["evil\nkey" * 100], None))
    assert report.level == "warning"
    assert "\n" not in report.text() and len(report.text()) < 400


def test_a_malformed_worker_lost_report_is_refused_saying_what_is_expected():
    for bad in (lost("hog", None), lost(["a"] * 6, None), lost([], True), lost([1], None)):
        with pytest.raises(BadReport, match=re.escape("expected {kind: 'worker_lost'")):
            parse_report(bad)
