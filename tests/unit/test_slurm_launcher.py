"""The Slurm launcher's pure parts: what squeue says, in the analyst's words; settings refused."""

from __future__ import annotations

import logging

import pytest
from traitlets.config import Config, Configurable

from gateway_backend.config import ConfigError
from gateway_backend.launchers.base import ClusterFacts, Phase
from gateway_backend.launchers.loading import LauncherSpec, build_launchers, scheduler_spec
from gateway_backend.launchers.slurm import SlurmLauncher
from gateway_backend.launchers.slurm.client import (
    SEPARATOR,
    JobRecord,
    field_records,
    job_records,
    task_ids,
)
from gateway_backend.launchers.slurm.status import job_check, pending_words


def record(state: str, reason: str = "None", exit_code: int = 0) -> JobRecord:
    return JobRecord("7_1", "7", 1, "", state, reason, exit_code)


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("Resources", "waiting for free CPUs, memory or GPUs in the partition (Resources)"),
        ("Priority", "waiting behind jobs of higher priority (Priority)"),
        (
            "QOSMaxCpuPerUserLimit",
            "your QOS's limit on CPUs per user is reached (QOSMaxCpuPerUserLimit)",
        ),
        ("QOSSomethingNew", "a limit of the account or QOS is reached (QOSSomethingNew)"),
        ("WhoKnows", "pending in Slurm (WhoKnows)"),
        ("None", "queued in Slurm, not scheduled yet"),
    ],
)
def test_pending_reasons_are_words_with_slurms_code(reason, words):
    assert pending_words(reason) == words
    assert job_check(record("PENDING", reason)) == job_check(record("PENDING", reason))
    assert job_check(record("PENDING", reason)).phase is Phase.PENDING


@pytest.mark.parametrize(
    ("state", "reason", "exit_code", "words"),
    [
        ("FAILED", "NonZeroExitCode", 3 << 8, "the job failed (exit code 3): boom"),
        ("CANCELLED", "None", 9, "the job was cancelled (killed by signal 9): boom"),
        ("TIMEOUT", "None", 0, "the job reached its time limit: boom"),
        ("OUT_OF_MEMORY", "None", 0, "the worker ran out of memory: boom"),
        ("NODE_FAIL", "None", 0, "the node running the job failed: boom"),
        ("COMPLETED", "None", 0, "the worker exited: boom"),
    ],
)
def test_ended_jobs_fail_their_worker_saying_how(state, reason, exit_code, words):
    check = job_check(record(state, reason, exit_code), "boom")
    assert check.phase is Phase.FAILED and check.reason == words


def test_running_jobs_are_running():
    assert job_check(record("RUNNING")).phase is Phase.RUNNING


def test_pending_arrays_are_expanded_into_their_tasks_and_other_jobs_ignored():
    document = {
        "jobs": [
            {
                "name": "gw",
                "array_job_id": 5,
                "array_task_id": None,
                "array_task_string": "0-2,7",
                "job_state": "PENDING",
                "state_reason": "Priority",
                "comment": "c",
                "exit_code": 0,
            },
            {
                "name": "gw",
                "array_job_id": 4,
                "array_task_id": 1,
                "array_task_string": "",
                "job_state": "RUNNING",
                "state_reason": "None",
                "comment": "c",
                "exit_code": 0,
            },
            {"name": "other", "array_job_id": 3, "array_task_id": 0, "job_state": "RUNNING"},
            {"name": "gw", "array_job_id": 0, "array_task_id": None, "job_state": "RUNNING"},
        ]
    }
    ids = [r.job_id for r in job_records(document, "gw")]
    assert ids == ["5_0", "5_1", "5_2", "5_7", "4_1"]
    assert list(task_ids("0-99%10"))[-1] == 99 and list(task_ids("1-7:3")) == [1, 4, 7]


def test_the_fields_query_reads_named_fields_and_keeps_comments_whole():
    sep = SEPARATOR
    output = "\n".join(
        [
            sep.join(["gw", "5", "0-1,3", "PENDING", "Priority", "0", "eg1;a;b;c;d"]),
            sep.join(["gw", "4", "1", "FAILED", "NonZeroExitCode", "768", f"x{sep}y"]),
            sep.join(["other", "3", "0", "RUNNING", "None", "0", "(null)"]),
            sep.join(["gw", "0", "N/A", "RUNNING", "None", "0", "(null)"]),  # not an array
            "garbage",
        ]
    )
    records = field_records(output, "gw")
    assert [r.job_id for r in records] == ["5_0", "5_1", "5_3", "4_1"]
    assert records[0].comment == "eg1;a;b;c;d" and records[0].reason == "Priority"
    assert records[3].comment == f"x{sep}y" and records[3].exit_code == 768


def build(**settings):
    pools = {"hpc": LauncherSpec("slurm", settings, "ElasticBackend.worker_pools['hpc']")}
    parent = Configurable(config=Config())
    return build_launchers(scheduler_spec("local"), pools, parent, logging.getLogger("t"))[1]


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"partition": "debug\n#SBATCH --qos=high"}, "SlurmLauncher.partition"),
        ({"account": "a;b"}, "SlurmLauncher.account"),
        ({"qos": "x y"}, "SlurmLauncher.qos"),
        ({"constraint": "a'b"}, "SlurmLauncher.constraint"),
        ({"time_limit": "$(id)"}, "SlurmLauncher.time_limit"),
        ({"extra_sbatch": ["--x\n#SBATCH --y"]}, "SlurmLauncher.extra_sbatch"),
        ({"staging_directory": "/tmp/a b"}, "SlurmLauncher.staging_directory"),
        ({"staging_directory": "relative/dir"}, "SlurmLauncher.staging_directory"),
        ({"environment": {"A-B": "x"}}, "SlurmLauncher.environment"),
        ({"vo_accounts": {"cms": "cms\nx"}}, "SlurmLauncher.vo_accounts"),
        ({"gateway_id": ""}, "SlurmLauncher.gateway_id"),
    ],
)
def test_pool_settings_that_could_inject_are_refused_at_start_naming_the_key(settings, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(**settings)


def test_a_vo_is_charged_to_its_account_then_its_accounting_group_then_the_default():
    launcher = build(
        vo_accounts={"cms": "cms-analysis"}, account="general", account_from_accounting_group=True
    )["hpc"]
    assert launcher.account_of(ClusterFacts("cms", "group_cms")) == "cms-analysis"
    assert launcher.account_of(ClusterFacts("atlas", "group_atlas")) == "group_atlas"
    assert launcher.account_of(ClusterFacts(None, None)) == "general"
    with pytest.raises(ValueError, match="Slurm account of VO bad"):
        launcher.account_of(ClusterFacts("bad", "group bad"))


def test_the_short_name_loads_the_slurm_launcher():
    assert isinstance(build(partition="debug")["hpc"], SlurmLauncher)


async def test_a_workers_log_is_its_array_tasks_output_file(tmp_path):
    from types import SimpleNamespace

    launcher = SlurmLauncher(staging_directory=str(tmp_path))
    cluster = SimpleNamespace(name="c" * 32)
    logs = tmp_path / cluster.name / "logs"
    logs.mkdir(parents=True)
    (logs / "slurm-41_0.out").write_text("Starting Worker\nKilled\n")
    done = SimpleNamespace(name="w0", state={"job_id": "41_0"})
    unsubmitted = SimpleNamespace(name="w1", state={})
    missing = SimpleNamespace(name="w2", state={"job_id": "41_2"})

    logs_by_name = await launcher.fetch_logs(cluster, [done, unsubmitted, missing])

    assert logs_by_name == {"w0": "Starting Worker\nKilled"}


async def test_an_empty_database_counts_the_active_tasks_of_unknown_clusters_only(tmp_path):
    from types import SimpleNamespace

    from gateway_backend.launchers.base import KnownRecords
    from gateway_backend.launchers.slurm.script import job_comment

    launcher = SlurmLauncher(staging_directory=str(tmp_path), gateway_id="gw")
    mine = job_comment(launcher.submitter, "a" * 32, "alice", "0" * 16)
    known = job_comment(launcher.submitter, "b" * 32, "bob", "1" * 16)
    other_gateway = job_comment("other:00000000", "c" * 32, "carol", "2" * 16)
    records = [
        JobRecord("7_0", "7", 0, mine, "RUNNING", "None", 0),
        JobRecord("7_1", "7", 1, mine, "PENDING", "Priority", 0),
        JobRecord("7_2", "7", 2, mine, "COMPLETED", "None", 0),  # ended: nothing to lose
        JobRecord("8_0", "8", 0, known, "RUNNING", "None", 0),
        JobRecord("9_0", "9", 0, other_gateway, "RUNNING", "None", 0),
    ]

    async def jobs(gateway_id):
        return records

    launcher.client = SimpleNamespace(jobs=jobs)
    assert await launcher.count_unknown(KnownRecords(frozenset({"b" * 32}), frozenset())) == 2
