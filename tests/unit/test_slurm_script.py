"""Worker batch scripts, run by a real bash outside Slurm: names, quoting, credentials, lease.

The script is executed as Slurm would run one array task (``SLURM_ARRAY_TASK_ID``
set), with a stand-in worker command that records what it received.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway_backend.launchers.slurm.script import (
    WORKER_NAME,
    UnsafeValue,
    WorkerJob,
    job_comment,
    parse_comment,
    render,
    submitter_id,
)

HOSTILE = (
    "a\n#SBATCH --partition=evil\n$(touch PWNED) `touch PWNED` '; touch PWNED; '\"$HOME\" \\ ü"
)

RECORDER = """
import json, os, sys
json.dump({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
           "files": sorted(os.listdir("."))}, open(os.environ["RECORD"], "w"))
"""


def make_job(
    directory: Path, *, environment=None, command=None, lease: float = 60, **kw
) -> WorkerJob:
    fields = dict(
        job_name="eg-test",
        comment=job_comment("eg-test", "c" * 32, "alice", "0123456789abcdef"),
        workers=["w0", "w1"],
        stage=str(directory),
        cores=2,
        memory_bytes=3 * 2**30 + 1,
        gpus=0,
        environment=environment or {},
        command=command or [sys.executable, "-c", RECORDER, "--name", WORKER_NAME],
        lease_duration=lease,
        options={"partition": "debug", "account": "", "qos": "", "constraint": "", "time": ""},
    )
    fields.update(kw)
    return WorkerJob(**fields)


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    stage = tmp_path / "stage"
    (stage / "logs").mkdir(parents=True, mode=0o700)
    (stage / "dask.crt").write_text("CERT")
    (stage / "dask.pem").write_text("KEY")
    (stage / "lease").touch()
    return stage


def run_task(script: str, tmp_path: Path, task: int, record: Path, timeout: float = 30):
    path = tmp_path / "job.sh"
    path.write_text(script)
    jobtmp = tmp_path / "jobtmp"
    jobtmp.mkdir(exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_ARRAY_TASK_ID": str(task),
        "TMPDIR": str(jobtmp),
        "RECORD": str(record),
    }
    done = subprocess.run(
        ["bash", str(path)], env=env, capture_output=True, text=True, timeout=timeout
    )
    return done, jobtmp


def test_a_task_runs_its_own_worker_with_the_environment_verbatim_and_no_injection(stage, tmp_path):
    record = tmp_path / "record.json"
    job = make_job(stage, environment={"ANALYSIS_TAG": HOSTILE, "RECORD": str(record)})
    done, jobtmp = run_task(render(job), tmp_path, 1, record)
    assert done.returncode == 0, done.stderr
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["--name", "w1"]  # task 1 is the second worker
    assert seen["env"]["ANALYSIS_TAG"] == HOSTILE
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
    # The worker ran in a private copy of the TLS files, removed when the job ended.
    assert seen["files"] == ["dask.crt", "dask.pem"]
    assert Path(seen["cwd"]).parent == jobtmp and list(jobtmp.iterdir()) == []


def test_directives_are_only_the_gateways_and_come_before_any_command(stage):
    script = render(make_job(stage, environment={"X": HOSTILE}, extra=["--exclusive"]))
    lines = script.splitlines()
    header = [line for line in lines if line.startswith("#SBATCH")]
    assert lines[1 : 1 + len(header)] == header  # all at the top, none further down
    assert all(line.startswith("#SBATCH --") for line in header)
    assert not any("evil" in line for line in lines if not line.startswith("export X="))
    assert "#SBATCH --partition=debug" in header and "#SBATCH --exclusive" in header
    assert "#SBATCH --mem=3073M" in header and "#SBATCH --cpus-per-task=2" in header
    assert "#SBATCH --array=0-1" in header and "#SBATCH --export=NONE" in header
    assert not any("evil" in line for line in header)
    assert "CERT" not in script and "KEY" not in script.replace("KEY_FILE", "")


def test_a_job_whose_lease_lapsed_before_it_started_ends_without_running_the_worker(
    stage, tmp_path
):
    record = tmp_path / "record.json"
    old = time.time() - 120
    os.utime(stage / "lease", (old, old))
    done, _ = run_task(render(make_job(stage, lease=60)), tmp_path, 0, record)
    assert done.returncode == 0 and not record.exists()
    assert "lease lapsed before worker w0 started" in done.stderr


def test_a_running_worker_is_stopped_when_its_lease_is_not_renewed(stage, tmp_path):
    # A worker that would run for a minute; the lease (4 s) is never renewed.
    job = make_job(stage, lease=4, command=["sleep", "60"])
    started = time.monotonic()
    done, jobtmp = run_task(render(job), tmp_path, 0, tmp_path / "unused", timeout=40)
    assert time.monotonic() - started < 20
    assert "lease lapsed" in done.stderr and "stopping worker w0" in done.stderr
    assert list(jobtmp.iterdir()) == []  # the TLS copy is gone


def test_a_renewed_lease_keeps_the_worker_running_until_it_exits(stage, tmp_path):
    job = make_job(stage, lease=2, command=["bash", "-c", "sleep 4; exit 3"])
    # Renew from a background process, as the gateway's status step does.
    renew = subprocess.Popen(
        ["bash", "-c", f"for i in $(seq 20); do touch {stage / 'lease'}; sleep 0.3; done"]
    )
    try:
        done, _ = run_task(render(job), tmp_path, 0, tmp_path / "unused")
    finally:
        renew.kill()
        renew.wait()
    assert done.returncode == 3 and "lease lapsed" not in done.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"environment": {"BAD-NAME": "x"}}, "not a shell variable name"),
        ({"environment": {"X": "nul\0byte"}}, "environment variable X contains a NUL"),
        ({"workers": ["w0", "w1;rm"]}, "worker name 'w1;rm'"),
        ({"comment": "x\n#SBATCH --y"}, "comment"),
        ({"stage": "/tmp/has space"}, "staging directory"),
        ({"stage": "/tmp/pattern%j"}, "staging directory"),
        ({"options": {"partition": "debug\n#SBATCH --qos=high"}}, "partition"),
        ({"options": {"account": "a b"}}, "account"),
        ({"options": {"time": "1 day"}}, "time"),
        ({"extra": ["--x\n#SBATCH --y"]}, "extra sbatch option"),
        ({"extra": ["hostname"]}, "must start with '-'"),
    ],
)
def test_values_a_script_cannot_carry_exactly_are_refused(stage, change, message):
    with pytest.raises(UnsafeValue, match=message.replace("(", r"\(")):
        render(make_job(stage, **change))


def test_the_comment_identifies_gateway_cluster_and_batch_and_encodes_the_owner():
    submitter = submitter_id("gw", "/srv/stage")
    assert submitter.startswith("gw:") and submitter != submitter_id("gw", "/srv/other")
    comment = job_comment(submitter, "c1", "m'al;lory\n#SBATCH x", "0123456789abcdef")
    assert parse_comment(comment, submitter) == ("c1", "0123456789abcdef")
    assert parse_comment(comment, submitter_id("other-gateway", "/srv/stage")) is None
    assert parse_comment(comment, submitter_id("gw", "/srv/other")) is None
    assert "\n" not in comment and " " not in comment and "'" not in comment
    assert comment.split(";")[3] == "m%27al%3Blory%0A%23SBATCH%20x"
    # Slurm refuses comments over 1024 characters: the longest owner still fits.
    longest = job_comment(submitter_id("g" * 128, "/s"), "c" * 64, "\n" * 1000, "0" * 16)
    assert len(longest) <= 1024
