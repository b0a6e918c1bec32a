"""Slurm worker jobs end to end: real gateway and proxy, real slurmctld/slurmd/munged.

The daemons are the tests' own (``tests/slurm``), one node on loopback, unless
``ELASTIC_GATEWAY_TEST_SLURM`` names a site's ``slurm.conf`` (see
``tests/slurm/fixtures.py``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from gateway_backend.launchers.slurm.script import submitter_id

from ..conftest import wait_for, workers_of
from ..slurm.fixtures import Slurm, needs_own_daemons, slurm_fixture  # noqa: F401
from .test_replacement import restart_brings_every_worker_back

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def slurm_config(slurm: Slurm, staging: Path, gateway_id: str, extra: str, pools: str) -> str:
    bindir = os.path.dirname(sys.executable)
    lines = [
        f"import sys; sys.path.insert(0, {str(REPO)!r})",
        f"c.ElasticBackend.worker_pools = {pools}",
        "c.ElasticBackend.worker_start_timeout = 120",
        "c.ElasticBackend.launcher_retry_delay = 2",
        "c.SlurmLauncher.status_period = 1",
        f"c.SlurmLauncher.gateway_id = {gateway_id!r}",
        f"c.SlurmLauncher.slurm_conf = {slurm.conf!r}",
        f"c.SlurmLauncher.staging_directory = {str(staging)!r}",
        f'c.SlurmLauncher.environment = {{"PATH": {bindir + ":/usr/bin:/bin"!r}}}',
        "c.SlurmLauncher.command_timeout = 4",
        f"c.SlurmLauncher.partition = {slurm.partition!r}",
    ]
    if slurm.harness is not None:
        lines.append('c.SlurmLauncher.worker_host = "127.0.0.1"')
    if os.environ.get("ELASTIC_GATEWAY_TEST_SCHEDULER_ADDRESS"):
        address = os.environ["ELASTIC_GATEWAY_TEST_SCHEDULER_ADDRESS"]
        lines.append(f"c.SlurmLauncher.scheduler_address = {address!r}")
    return "\n".join(lines) + "\n" + extra


class SlurmPool:
    """A gateway whose workers are Slurm jobs, plus a view of its jobs in the queue."""

    def __init__(self, gateways, slurm: Slurm, tmp_path: Path, extra: str, pools: str) -> None:
        self.slurm = slurm
        self.gateway_id = f"test-{uuid.uuid4().hex[:8]}"
        self.staging = Path(slurm.staging or tmp_path) / self.gateway_id
        config = slurm_config(slurm, self.staging, self.gateway_id, extra, pools)
        self.gateway = gateways.start(config)
        self.gw = gateways.client(self.gateway)

    @property
    def submitter(self) -> str:
        return submitter_id(self.gateway_id, str(self.staging))

    def tasks(self, cluster: str | None = None):
        """This gateway's active array tasks (of one cluster), by worker name."""
        return self.slurm.tasks(self.gateway_id, self.staging, cluster)

    def states(self, cluster: str | None = None) -> dict[str, str]:
        return {name: task.state for name, task in self.tasks(cluster).items()}

    def close(self) -> None:
        self.gw.close()
        self.slurm.cancel_all(self.gateway_id)


@pytest.fixture
def make_pool(gateways, slurm, tmp_path):
    pools = []

    def make(extra: str = "", pools_config: str = '{"slurm": {"launcher": "slurm"}}') -> SlurmPool:
        pool = SlurmPool(gateways, slurm, tmp_path / f"pool{len(pools)}", extra, pools_config)
        pools.append(pool)
        return pool

    yield make
    gateways.teardown()
    for pool in pools:
        pool.close()


def pending_reasons(pool: SlurmPool, cluster: str, code: str) -> list[str]:
    """The analyst's pending reasons of a cluster, once they all name Slurm's ``code``."""
    reasons = pool.gw.cluster_details(cluster)["pools"]["slurm"]["pending_reasons"]
    return reasons if reasons and all(f"({code})" in r for r in reasons) else []


SMALL = 'c.SlurmLauncher.partition = "small"\n'  # 2 CPUs: further 1-core jobs pend (Resources)

SUBMIT = "POST /slurm/v0.0.38/job/submit"

#: The same behaviour through the command-line tools and through slurmrestd.
TRANSPORTS = pytest.mark.parametrize("transport", ["cli", "rest"])


@pytest.mark.parametrize(
    ("transport", "query"), [("cli", "fields"), ("cli", "json"), ("rest", "fields")]
)
def test_slurm_workers_run_as_one_job_array_and_compute_through_the_proxy(
    make_pool, slurm, transport, query
):
    pool = make_pool(
        f"c.SlurmLauncher.status_query = {query!r}\n" + slurm.transport_config(transport)
    )
    rest_log = slurm.harness.rest_requests if slurm.harness and slurm.rest_url else None
    before = rest_log(SUBMIT) if rest_log else 0
    cluster = pool.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 Slurm workers")
    client = cluster.get_client()
    assert sum(client.gather(client.map(lambda x: x + 1, range(30)))) == sum(range(1, 31))
    tasks = pool.tasks(cluster.name)
    assert set(tasks) == {w["name"] for w in cluster.scheduler_info["workers"].values()}
    assert {t.state for t in tasks.values()} == {"RUNNING"}
    assert len({t.array_id for t in tasks.values()}) == 1  # one sbatch for the scale step
    # Workers connect through the proxy's TLS port with SNI, like remote workers must.
    addresses = client.run(lambda dask_worker: str(dask_worker.scheduler.address))
    proxy_port = pool.gateway.address.rsplit(":", 1)[-1]
    assert all(a.startswith("tls://") and a != proxy_port for a in addresses.values())
    client.close()
    cluster.shutdown()
    wait_for(lambda: pool.tasks() == {}, what="no job after stop")
    if rest_log:  # the jobs went through slurmrestd exactly when asked to
        assert rest_log(SUBMIT) - before == (1 if transport == "rest" else 0)


@needs_own_daemons
@TRANSPORTS
def test_scale_down_cancels_exactly_the_chosen_jobs_and_pending_ones_say_why(
    make_pool, slurm, transport
):
    pool = make_pool(SMALL + slurm.transport_config(transport))
    cluster = pool.gw.new_cluster()
    cluster.scale(4)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 running workers")
    wait_for(
        lambda: sorted(pool.states(cluster.name).values()) == ["PENDING"] * 2 + ["RUNNING"] * 2,
        what="2 running and 2 pending jobs",
    )
    reasons = wait_for(lambda: pending_reasons(pool, cluster.name, "Resources"))
    assert len(reasons) == 2 and all("waiting for free CPUs" in r for r in reasons), reasons
    running = {n for n, s in pool.states(cluster.name).items() if s == "RUNNING"}

    cluster.scale(2)
    wait_for(lambda: set(pool.tasks(cluster.name)) == running, what="the pending jobs cancelled")
    time.sleep(2)  # nothing else goes
    assert set(pool.tasks(cluster.name)) == running and workers_of(cluster) == 2
    cluster.shutdown()


@needs_own_daemons
@TRANSPORTS
def test_stopping_a_cluster_leaves_no_job_and_no_staged_file(make_pool, slurm, transport):
    pool = make_pool(SMALL + slurm.transport_config(transport))
    cluster = pool.gw.new_cluster()
    cluster.scale(3)  # 2 running, 1 pending
    wait_for(lambda: len(pool.tasks(cluster.name)) == 3, what="3 jobs")
    staged = pool.staging / cluster.name
    assert staged.is_dir() and (staged.stat().st_mode & 0o777) == 0o700
    assert {oct(p.stat().st_mode & 0o777) for p in staged.glob("dask.*")} == {"0o600"}
    cluster.shutdown()
    wait_for(lambda: pool.tasks() == {}, what="every job cancelled")
    wait_for(lambda: not staged.exists(), what="the staging directory removed")


def worker_processes(cluster_name: str) -> list[int]:
    """Pids of the processes Slurm started for a cluster's workers (by their environment)."""
    marker = f"DASK_GATEWAY_CLUSTER_NAME={cluster_name}".encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_cluster_key_is_in_no_job_description_script_command_line_or_environment(make_pool):
    pool = make_pool()
    cluster = pool.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 worker")
    key = cluster.security.tls_key.strip()
    key_body = "".join(key.splitlines()[1:-1])[:64]
    secrets = [key_body, "PRIVATE KEY", "DASK_GATEWAY_API_TOKEN"]
    (task,) = pool.tasks(cluster.name).values()
    texts = [
        pool.slurm.run("scontrol", "-dd", "show", "job", task.job_id),
        pool.slurm.run("scontrol", "write", "batch_script", task.array_id, "-"),
    ]
    pids = worker_processes(cluster.name) if pool.slurm.harness else []
    if pool.slurm.harness:
        assert pids, "the worker process was not found"
    job_dirs = set()
    for pid in pids:
        texts.append(Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace"))
        texts.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if "elastic-gateway." in cwd:
            job_dirs.add(Path(cwd))
    for text in texts:
        assert text and not any(s in text for s in secrets)
    assert "dask.pem" in texts[1]  # the script names the key file, never its content
    if pool.slurm.harness:
        (job_dir,) = job_dirs  # the worker runs in the job's private copy of the TLS files
        assert job_dir.stat().st_mode & 0o777 == 0o700
    cluster.shutdown()
    wait_for(lambda: pool.tasks() == {}, what="no job after stop")
    for job_dir in job_dirs:
        wait_for(lambda d=job_dir: not d.exists(), what="the job's TLS copy removed")


@needs_own_daemons
@TRANSPORTS
def test_a_30s_slurmctld_outage_is_survived(make_pool, slurm, transport):
    pool = make_pool(slurm.transport_config(transport))
    cluster = pool.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 worker")
    pool.slurm.harness.pause_controller()
    try:
        outage_end = time.monotonic() + 30
        cluster.scale(3)  # requested during the outage

        def told_unavailable():
            events = pool.gw.cluster_details(cluster.name)["events"]
            return any("pool slurm is unavailable" in e["message"] for e in events)

        wait_for(told_unavailable, timeout=20, what="the owner told the pool is unavailable")
        details = pool.gw.cluster_details(cluster.name)
        assert details["status"] == "RUNNING" and workers_of(cluster) == 1
        time.sleep(max(0.0, outage_end - time.monotonic()))
    finally:
        pool.slurm.harness.resume_controller()
    wait_for(lambda: workers_of(cluster) == 3, timeout=90, what="recovery to 3 workers")
    client = cluster.get_client()
    assert client.submit(lambda: 7 * 6).result() == 42
    client.close()
    details = pool.gw.cluster_details(cluster.name)
    assert details["status"] == "RUNNING" and details["failure_reason"] is None
    assert len(pool.tasks(cluster.name)) == 3  # no duplicate from a retried submission
    cluster.shutdown()
    wait_for(lambda: pool.tasks() == {}, what="no job after stop")


def test_a_hybrid_cluster_spills_from_the_capped_slurm_pool_into_a_local_pool(make_pool):
    pool = make_pool(pools_config='{"slurm": {"launcher": "slurm", "max_workers": 2}, "local": {}}')
    cluster = pool.gw.new_cluster()
    cluster.scale(3)
    wait_for(lambda: workers_of(cluster) == 3, timeout=90, what="3 workers")

    def running():
        pools = pool.gw.cluster_details(cluster.name)["pools"]
        return {name: p["running"] for name, p in pools.items()}

    wait_for(lambda: running() == {"slurm": 2, "local": 1}, what="2 Slurm and 1 local worker")
    assert len(pool.tasks(cluster.name)) == 2
    client = cluster.get_client()
    assert sum(client.gather(client.map(lambda x: 2 * x, range(20)))) == 2 * sum(range(20))
    client.close()
    cluster.shutdown()
    wait_for(lambda: pool.tasks() == {}, what="no job after stop")


@needs_own_daemons
def test_a_restarted_gateway_adopts_its_jobs_cancels_strays_and_the_lease_ends_the_rest(make_pool):
    # The "parked" partition is down: jobs stay pending, so only the gateway or the lease
    # can end them. (Running workers end by themselves when the gateway's proxy dies.)
    pool = make_pool('c.SlurmLauncher.partition = "parked"\nc.SlurmLauncher.lease_duration = 10\n')
    cluster = pool.gw.new_cluster(shutdown_on_close=False)
    cluster.scale(2)
    wait_for(lambda: len(pool.tasks(cluster.name)) == 2, what="2 pending jobs")
    reasons = wait_for(lambda: pending_reasons(pool, cluster.name, "PartitionDown"))
    assert len(reasons) == 2 and all("the partition is down" in r for r in reasons), reasons
    name, jobs = cluster.name, pool.tasks(cluster.name)
    cluster.close()
    pool.gw.close()

    pool.gateway.kill()
    # A job in this gateway's name without a worker record (a submission that went
    # through after the gateway gave up on it, or died).
    stray = "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name={pool.gateway_id}",
            f"#SBATCH --comment=eg1;{pool.submitter};{name};x;{'0' * 16}",
            "#SBATCH --array=0-0",
            "#SBATCH --partition=parked",
            "#SBATCH --output=/dev/null",
            "sleep 300",
        ]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(stray)
        f.flush()
        stray_id = pool.slurm.run("sbatch", "--parsable", f.name).strip() + "_0"
    assert set(pool.tasks(name)) == {*jobs, f"unknown:{stray_id}"}

    pool.gateway.start()
    pool.gw = pool.gw.__class__(pool.gateway.address, auth=pool.gw.auth)
    wait_for(lambda: set(pool.tasks(name)) == set(jobs), what="the stray job cancelled")
    time.sleep(3)  # a few status periods: the recorded jobs are adopted, not replaced
    assert {n: t.job_id for n, t in pool.tasks(name).items()} == {
        n: t.job_id for n, t in jobs.items()
    }
    assert pool.gw.cluster_details(name)["pools"]["slurm"]["pending"] == 2

    pool.gateway.kill()
    time.sleep(13)  # past the lease
    # Let the jobs start: each sees its lapsed lease and ends without starting a worker.
    for task in jobs.values():
        pool.slurm.run("scontrol", "update", f"JobId={task.job_id}", "Partition=debug")
    wait_for(lambda: pool.tasks(name) == {}, timeout=30, what="the jobs to end by the lease")
    logs = [pool.staging / name / "logs" / f"slurm-{t.job_id}.out" for t in jobs.values()]
    assert all("lease lapsed before worker" in p.read_text() for p in logs)


@TRANSPORTS
def test_a_submission_slurm_refuses_stops_worker_starts_with_slurms_words(
    make_pool, slurm, transport
):
    # Slurm answers and says no: a failure the analyst reads, not an outage to wait out.
    pool = make_pool(
        'c.SlurmLauncher.partition = "no-such-partition"\n'
        "c.ElasticBackend.worker_failure_budget = 2\n"
        "c.ElasticBackend.worker_replace_backoff = 0.5\n" + slurm.transport_config(transport)
    )
    cluster = pool.gw.new_cluster()
    cluster.scale(1)

    def spent():
        events = [e["message"] for e in pool.gw.cluster_details(cluster.name)["events"]]
        return events if any("stopped replacing lost workers" in m for m in events) else None

    events = wait_for(spent, timeout=60, what="the failure budget spent")
    [message] = [m for m in events if "stopped replacing lost workers" in m]
    assert "invalid partition" in message.lower(), message
    events = " ".join(events)
    assert "Slurm refused the worker jobs" in events and "unavailable" not in events
    assert pool.tasks() == {}


def test_two_slurm_pools_with_their_own_staging_directories_leave_each_others_jobs_alone(
    make_pool, tmp_path
):
    other = tmp_path / "other-staging"
    pool = make_pool(
        pools_config='{"a": {"launcher": "slurm", "max_workers": 1}, '
        f'"b": {{"launcher": "slurm", "staging_directory": {str(other)!r}}}}}'
    )
    cluster = pool.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="a worker in each pool")
    ours = pool.tasks(cluster.name)
    theirs = pool.slurm.tasks(pool.gateway_id, other, cluster.name)
    assert len(ours) == len(theirs) == 1
    time.sleep(3)  # several status periods of both instances
    assert pool.tasks(cluster.name) == ours
    assert pool.slurm.tasks(pool.gateway_id, other, cluster.name) == theirs
    assert workers_of(cluster) == 2
    cluster.shutdown()
    wait_for(
        lambda: not any(r.active for r in pool.slurm.records(pool.gateway_id)),
        what="no job of either pool after stop",
    )


@needs_own_daemons
@TRANSPORTS
def test_worker_jobs_ask_for_the_clusters_cores_memory_and_gpus(make_pool, slurm, transport):
    # The harness's node has 2 (pretend) GPUs: a third 1-GPU worker waits for one.
    pool = make_pool("c.ElasticClusterConfig.worker_gpus = 1\n" + slurm.transport_config(transport))
    cluster = pool.gw.new_cluster(worker_cores=2, worker_memory=3)
    cluster.scale(3)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 running GPU workers")
    reasons = wait_for(lambda: pending_reasons(pool, cluster.name, "Resources"))
    assert len(reasons) == 1, reasons
    for task in pool.tasks(cluster.name).values():
        job = pool.slurm.run("scontrol", "show", "job", task.job_id)
        assert "NumCPUs=2 " in job and "MinMemoryNode=3G" in job, job
        assert "TresPerNode=gres:gpu:1" in job, job
    cluster.shutdown()
    wait_for(lambda: pool.tasks() == {}, what="no job after stop")


def test_client_restart_brings_every_slurm_worker_back_in_the_same_jobs(make_pool):
    """The Nanny in each array task restarts its worker: no job is cancelled or submitted."""
    pool = make_pool()
    cluster = pool.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 Slurm workers")
    jobs = {name: task.job_id for name, task in pool.tasks(cluster.name).items()}
    restart_brings_every_worker_back(cluster, 2)
    assert {name: task.job_id for name, task in pool.tasks(cluster.name).items()} == jobs
    cluster.shutdown()
    wait_for(lambda: pool.tasks() == {}, what="no job after stop")
