"""The slurmrestd client: directives to job descriptions, answers to outcomes.

The mapping and error tests need no Slurm; the client tests talk to a real
slurmrestd (the tests' own, ``tests/slurm``) and, for failures Slurm cannot be
made to produce on cue (a hung or vanished slurmrestd), to a socket that hangs
or to none.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from gateway_backend.launchers.base import LauncherUnavailable
from gateway_backend.launchers.slurm.client import SlurmRefused
from gateway_backend.launchers.slurm.rest import (
    SlurmRestClient,
    check_answer,
    job_properties,
    megabytes,
    minutes,
)
from gateway_backend.launchers.slurm.script import render

from ..slurm.fixtures import Slurm, slurm_fixture  # noqa: F401
from .test_slurm_script import make_job


def test_the_rendered_scripts_directives_become_the_job_description(tmp_path: Path):
    job = make_job(
        tmp_path,
        gpus=1,
        options={"partition": "debug", "account": "physics", "qos": "", "constraint": "avx2&el9",
                 "time": "1-02:03:04"},
        extra=["--reservation=maint", "--requeue"],
    )  # fmt: skip
    properties = job_properties(render(job))
    assert properties == {
        "environment": {"SLURM_EXPORT_ENV": "NONE"},  # --export=NONE: nothing of the gateway's
        "name": "eg-test",
        "comment": job.comment,
        "array": "0-1",
        "nodes": [1, 1],
        "tasks": 1,
        "cpus_per_task": 2,
        "memory_per_node": 3073,  # 3 GiB and a byte, rounded up to MB as sbatch gets it
        "current_working_directory": str(tmp_path),
        "standard_output": f"{tmp_path}/logs/slurm-%A_%a.out",
        "gres": "gpu:1",
        "partition": "debug",
        "account": "physics",
        "constraints": "avx2&el9",
        "time_limit": 24 * 60 + 2 * 60 + 4,  # 3 min 4 s rounds up to a whole minute
        "reservation": "maint",
        "requeue": True,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30", 30), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440), ("1-1:30", 1530), ("0:20", 1)],
)
def test_slurm_times_in_minutes(value, expected):
    assert minutes(value) == expected


def test_sizes_in_megabytes():
    assert [megabytes(v) for v in ("512", "3000M", "3G", "1T", "100K")] == [
        512,
        3000,
        3072,
        2**20,
        1,
    ]


@pytest.mark.parametrize("extra", ["--mail-type=END --x", "-p debug", "--frobnicate=1"])
def test_options_slurmrestd_cannot_take_are_refused_by_name(tmp_path: Path, extra):
    with pytest.raises(ValueError, match="slurmrestd"):
        job_properties(render(make_job(tmp_path, extra=[extra])))


def test_answers_map_to_outage_or_refusal_with_slurms_words():
    down = {"errors": [{"error_number": 1800, "description": "Unable to contact slurm controller"}]}
    with pytest.raises(LauncherUnavailable, match="Unable to contact"):
        check_answer(500, down, "GET /jobs")
    for status in (401, 403, 503):  # no slurmrestd behind a proxy, or a token it refuses
        with pytest.raises(LauncherUnavailable):
            check_answer(status, {}, "GET /jobs")
    refusal = {"errors": [{"error_code": 2000, "error": "Invalid partition name specified"}]}
    with pytest.raises(SlurmRefused, match="Invalid partition name specified"):
        check_answer(500, refusal, "POST /job/submit")
    gone = {"errors": [{"error_number": 2017, "error": "Invalid job id specified"}]}
    check_answer(500, gone, "DELETE /job/7_1", ignore=frozenset({2017}))  # already ended: fine
    check_answer(200, {"errors": []}, "GET /jobs")


def client_of(slurm: Slurm, timeout: float = 10) -> SlurmRestClient:
    if not slurm.rest_url.startswith("unix://"):
        pytest.skip("needs the tests' own slurmrestd (rest_auth/local)")
    return SlurmRestClient(slurm.rest_url, timeout)


SCRIPT = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --comment=unit-test
#SBATCH --array=0-2
#SBATCH --export=NONE
#SBATCH --partition={partition}
#SBATCH --output=/dev/null
sleep 60
"""


async def test_submit_list_and_cancel_array_tasks_through_a_real_slurmrestd(slurm: Slurm):
    client = client_of(slurm)
    name = "eg-rest-unit"
    try:
        array = await client.submit(SCRIPT.format(name=name, partition="parked"))
        records = await client.jobs(name)
        assert sorted(r.job_id for r in records) == [f"{array}_{t}" for t in range(3)]
        assert {(r.state, r.comment) for r in records} == {("PENDING", "unit-test")}
        await client.cancel([f"{array}_1", "999999"])  # an unknown job is no error
        left = [r.job_id for r in await client.jobs(name) if r.active]
        assert sorted(left) == [f"{array}_0", f"{array}_2"]
        assert client.calls == 5  # submit, list, one DELETE per id, list
        with pytest.raises(SlurmRefused, match="Invalid partition"):
            await client.submit(SCRIPT.format(name=name, partition="no-such-partition"))
    finally:
        slurm.cancel_all(name)
        await client.close()


async def test_a_slurmrestd_that_hangs_or_is_gone_is_an_outage(tmp_path: Path):
    path = tmp_path / "hangs.socket"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()  # accepts, never answers
    client = SlurmRestClient(f"unix://{path}", timeout=0.5)
    try:
        with pytest.raises(LauncherUnavailable, match=r"did not answer within 0\.5s"):
            await client.jobs("x")
    finally:
        server.close()
        await client.close()
    client = SlurmRestClient(f"unix://{tmp_path / 'none.socket'}", timeout=5)
    try:
        with pytest.raises(LauncherUnavailable, match="slurmrestd GET /jobs"):
            await asyncio.wait_for(client.jobs("x"), 5)
    finally:
        await client.close()


def test_the_token_is_sent_as_slurms_headers(tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("SECRET-JWT\n")
    client = SlurmRestClient("http://slurm:6820", 5, token_file=str(token), user="gateway")
    assert client._headers() == {"X-SLURM-USER-NAME": "gateway", "X-SLURM-USER-TOKEN": "SECRET-JWT"}
    token.unlink()
    with pytest.raises(LauncherUnavailable, match="token file"):
        client._headers()
    with pytest.raises(ValueError, match="unix:///path"):
        SlurmRestClient("slurm:6820", 5)
