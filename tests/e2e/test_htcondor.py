"""HTCondor worker jobs end to end: real gateway and proxy, jobs on the schedd stand-in.

Against a real pool: set ``ELASTIC_GATEWAY_TEST_SCHEDD`` to ``local`` (the local schedd)
or ``NAME@COLLECTOR``, and ``ELASTIC_GATEWAY_TEST_SCHEDULER_ADDRESS`` to the proxy's TLS
address as execute nodes see it; tests that inject faults into the schedd are skipped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from ..conftest import wait_for, workers_of

pytestmark = pytest.mark.e2e

REAL_SCHEDD = os.environ.get("ELASTIC_GATEWAY_TEST_SCHEDD", "")
REPO = Path(__file__).resolve().parents[2]
needs_standin = pytest.mark.skipif(bool(REAL_SCHEDD), reason="injects faults into the schedd")


def htcondor_config(socket_path: str | None, staging: Path, gateway_id: str, extra: str) -> str:
    bindir = os.path.dirname(sys.executable)
    lines = [
        f"import sys; sys.path.insert(0, {str(REPO)!r})",
        'c.ElasticBackend.worker_pools = {"condor": {"launcher": "htcondor"}}',
        "c.ElasticBackend.worker_start_timeout = 120",
        "c.ElasticBackend.launcher_retry_delay = 2",
        "c.HTCondorLauncher.status_period = 1",
        f"c.HTCondorLauncher.gateway_id = {gateway_id!r}",
        f"c.HTCondorLauncher.staging_directory = {str(staging)!r}",
        f'c.HTCondorLauncher.environment = {{"PATH": {bindir + ":/usr/bin:/bin"!r}}}',
        "c.HTCondorLauncher.schedd_timeout = 5",
    ]
    if socket_path is not None:
        lines += [
            "from tests.fakes.schedd.client import StandinSchedd",
            f"c.HTCondorLauncher.schedd_factory = lambda: StandinSchedd({socket_path!r})",
            'c.HTCondorLauncher.worker_host = "127.0.0.1"',
        ]
    elif REAL_SCHEDD != "local":
        name, _, collector = REAL_SCHEDD.partition("@")
        lines += [f"c.HTCondorLauncher.schedd_name = {name!r}"]
        lines += [f"c.HTCondorLauncher.collector = {collector!r}"]
    if os.environ.get("ELASTIC_GATEWAY_TEST_SCHEDULER_ADDRESS"):
        address = os.environ["ELASTIC_GATEWAY_TEST_SCHEDULER_ADDRESS"]
        lines.append(f"c.HTCondorLauncher.scheduler_address = {address!r}")
    return "\n".join(lines) + "\n" + extra


class Pool:
    """A gateway whose workers are HTCondor jobs, plus a view of the schedd's queue."""

    def __init__(self, gateways, tmp_path: Path, slots: int, extra: str) -> None:
        self.gateway_id = f"test-{uuid.uuid4().hex[:8]}"
        self._standin_context = None
        socket_path = None
        if not REAL_SCHEDD:
            from tests.fakes.schedd import start_standin

            self._standin_context = start_standin(tmp_path, slots=slots, tick=0.5)
            self.standin = self._standin_context.__enter__()
            factory, self.control = self.standin
            socket_path = str(factory().socket_path)
            self.schedd = factory()
        else:
            import htcondor2

            self.control = None
            self.schedd = htcondor2.Schedd()
        config = htcondor_config(socket_path, tmp_path / "staging", self.gateway_id, extra)
        self.gateway = gateways.start(config)
        self.gw = gateways.client(self.gateway)

    def jobs(self, constraint: str = "true") -> list:
        return self.schedd.query(
            f'DaskGatewayInstance == "{self.gateway_id}" && ({constraint})',
            ["ClusterId", "ProcId", "JobStatus", "DaskGatewayWorker", "DaskGatewayCluster"],
        )

    def close(self) -> None:
        self.gw.close()
        if self._standin_context is not None:
            self._standin_context.__exit__(None, None, None)


@pytest.fixture
def make_pool(gateways, tmp_path):
    pools = []

    def make(slots: int = 8, extra: str = "") -> Pool:
        pool = Pool(gateways, tmp_path / f"pool{len(pools)}", slots, extra)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        gateways.teardown()
        pool.close()


def test_htcondor_workers_join_through_the_proxy_with_sni_and_compute(make_pool):
    pool = make_pool()
    cluster = pool.gw.new_cluster()
    if pool.control:
        pool.control.reset_counters()
    cluster.scale(3)
    wait_for(lambda: workers_of(cluster) == 3, what="3 HTCondor workers")
    client = cluster.get_client()
    assert sum(client.gather(client.map(lambda x: x + 1, range(30)))) == sum(range(1, 31))
    jobs = pool.jobs(f'DaskGatewayCluster == "{cluster.name}"')
    assert len(jobs) == 3 and {j["JobStatus"] for j in jobs} == {2}
    assert {j["DaskGatewayWorker"] for j in jobs} == {
        w["name"] for w in cluster.scheduler_info["workers"].values()
    }
    if pool.control:
        assert pool.control.counters()["submit_procs"] == [3]  # one transaction
    client.close()
    cluster.shutdown()


def test_scale_down_removes_idle_jobs_first(make_pool):
    pool = make_pool(slots=2)
    cluster = pool.gw.new_cluster()
    cluster.scale(4)
    wait_for(lambda: workers_of(cluster) == 2, what="2 running workers")
    wait_for(lambda: len(pool.jobs("JobStatus == 1")) == 2, what="2 idle jobs")
    running = {j["DaskGatewayWorker"] for j in pool.jobs("JobStatus == 2")}

    cluster.scale(2)
    wait_for(lambda: len(pool.jobs()) == 2, what="the idle jobs to be removed")
    assert {j["DaskGatewayWorker"] for j in pool.jobs()} == running
    assert workers_of(cluster) == 2
    cluster.shutdown()


def test_cluster_stop_leaves_no_job(make_pool):
    pool = make_pool(slots=2)
    cluster = pool.gw.new_cluster()
    cluster.scale(3)  # 2 running, 1 idle
    wait_for(lambda: len(pool.jobs()) == 3, what="3 jobs")
    cluster.shutdown()
    wait_for(lambda: pool.jobs() == [], what="every job removed")


def test_cluster_key_and_token_appear_in_no_job_ad(make_pool):
    pool = make_pool()
    cluster = pool.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
    key = cluster.security.tls_key.strip()
    key_body = "".join(key.splitlines()[1:-1])[:64]
    ads = (
        pool.control.jobs()
        if pool.control
        else pool.schedd.query(f'DaskGatewayInstance == "{pool.gateway_id}"')
    )
    assert ads
    token_file = pool.gateway.state_dir / "gateway.sqlite"
    assert token_file.exists()
    for ad in ads:
        text = str(ad)
        assert key_body not in text and "PRIVATE KEY" not in text
        assert "DASK_GATEWAY_API_TOKEN" not in text
        assert "dask.pem" in text  # the key travels as a file, named, never inlined
    cluster.shutdown()


def test_a_held_job_fails_its_worker_with_the_hold_reason(make_pool):
    pool = make_pool(
        extra='c.HTCondorLauncher.worker_executable = "/nonexistent/env"\n'
        "c.ElasticBackend.worker_failure_budget = 2\n"
        "c.ElasticBackend.worker_replace_backoff = 0.5\n"
    )
    cluster = pool.gw.new_cluster()
    cluster.scale(1)

    def spent():
        events = pool.gw.cluster_details(cluster.name)["events"]
        return [e["message"] for e in events if "stopped replacing" in e["message"]]

    [message] = wait_for(spent, timeout=90, what="the failure budget spent")
    assert "each time: job held:" in message, message  # the same hold, whichever job
    wait_for(lambda: pool.jobs() == [], what="held jobs removed")


@needs_standin
def test_a_30s_schedd_outage_is_survived(make_pool):
    pool = make_pool()
    cluster = pool.gw.new_cluster()
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, what="1 worker")
    pool.control.set_unavailable(30)
    outage_end = time.monotonic() + 30
    cluster.scale(3)  # requested during the outage
    time.sleep(5)
    assert pool.gw.cluster_details(cluster.name)["status"] == "RUNNING"
    remaining = outage_end - time.monotonic()
    wait_for(lambda: workers_of(cluster) == 3, timeout=remaining + 60, what="recovery to 3")
    client = cluster.get_client()
    assert client.submit(lambda: 7 * 6).result() == 42
    client.close()
    details = pool.gw.cluster_details(cluster.name)
    assert details["status"] == "RUNNING" and details["failure_reason"] is None
    cluster.shutdown()
    wait_for(lambda: pool.jobs() == [], what="no jobs after stop")


@needs_standin
def test_jobs_of_a_killed_gateway_are_removed_by_the_lease_and_restart_reconciles(make_pool):
    # No free slot: the jobs stay idle, so only the lease can end them.
    pool = make_pool(slots=0, extra="c.HTCondorLauncher.lease_duration = 8\n")
    cluster = pool.gw.new_cluster(shutdown_on_close=False)
    cluster.scale(2)
    wait_for(lambda: len(pool.jobs("JobStatus == 1")) == 2, what="2 idle jobs")
    name = cluster.name
    cluster.close()
    pool.gw.close()

    pool.gateway.kill()
    assert len(pool.jobs()) == 2  # the schedd keeps them while the lease holds
    wait_for(lambda: pool.jobs() == [], timeout=30, what="the lease to remove the jobs")
    reasons = [
        str(ad.get("RemoveReason", ""))
        for ad in pool.control.history()
        if ad.get("DaskGatewayCluster") == name
    ]
    assert len(reasons) == 2 and all("PeriodicRemove" in r for r in reasons), reasons

    # A job the restarted gateway has no record of, in its name.
    import htcondor2

    stray = {
        "executable": "/bin/sleep",
        "arguments": "300",
        "transfer_executable": "false",
        "+DaskGatewayInstance": f'"{pool.gateway_id}"',
        "+DaskGatewayCluster": f'"{name}"',
        "+DaskGatewayWorker": '"not-a-worker"',
    }
    pool.schedd.submit(htcondor2.Submit(stray))

    pool.gateway.start()
    pool.control.set_slots(4)
    pool.gw = pool.gw.__class__(pool.gateway.address, auth=pool.gw.auth)
    cluster = pool.gw.connect(name)
    # Recorded workers without jobs are failed and replaced; the stray job is removed.
    wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="2 replacement workers")
    jobs = pool.jobs()
    assert len(jobs) == 2 and "not-a-worker" not in {j["DaskGatewayWorker"] for j in jobs}
    events = " ".join(e["message"] for e in pool.gw.cluster_details(name)["events"])
    assert "was gone after a gateway restart" in events
    cluster.shutdown()
    wait_for(lambda: pool.jobs() == [], what="no jobs after stop")


TWO_POOLS = """
c.ElasticBackend.worker_pools = {
    "cpu-condor": {"launcher": "htcondor", "max_workers": 1,
                   "extra_submit": {"requirements": "(TARGET.OpSysMajorVer == 9)"}},
    "gpu-condor-a100": {"launcher": "htcondor", "container_mode": "container",
                        "extra_submit": {"requirements": "(TARGET.CUDACapability >= 8.0)"}},
}
c.ElasticBackend.profiles = {
    "coffea": {"image": "/cvmfs/unpacked.cern.ch/coffea-dask:2025",
               "pools": ["cpu-condor", "gpu-condor-a100"]},
}
"""


@needs_standin  # the stand-in runs jobs whatever their requirements and image
def test_two_htcondor_pools_with_their_own_settings_and_the_profiles_image(make_pool):
    pool = make_pool(extra=TWO_POOLS)
    cluster = pool.gw.new_cluster(profile="coffea")
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, what="a worker in each pool")
    client = cluster.get_client()
    assert sum(client.gather(client.map(lambda x: x * 2, range(20)))) == 380
    ads = pool.schedd.query(
        f'DaskGatewayCluster == "{cluster.name}"',
        ["Requirements", "SingularityImage", "ContainerImage", "WantContainer"],
    )
    [container] = [ad for ad in ads if "ContainerImage" in ad]  # the container universe
    [vanilla] = [ad for ad in ads if "ContainerImage" not in ad]  # apptainer, the default
    assert container["WantContainer"] is True and "SingularityImage" not in container
    assert "OpSysMajorVer == 9" in str(vanilla["Requirements"])
    assert vanilla["SingularityImage"] == "/cvmfs/unpacked.cern.ch/coffea-dask:2025"
    assert "CUDACapability >= 8.0" in str(container["Requirements"])
    assert container["ContainerImage"] == "/cvmfs/unpacked.cern.ch/coffea-dask:2025"
    client.close()
    cluster.shutdown()


def test_nanny_workers_restart_and_take_nanny_plugins_through_the_proxy(make_pool):
    from distributed.diagnostics.plugin import Environ

    pool = make_pool()
    cluster = pool.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, what="2 HTCondor workers")
    client = cluster.get_client()
    client.register_plugin(Environ({"ANALYSIS_TAG": "ttbar-2025"}))  # restarts the workers

    def on_both(f):
        """``f`` on each of 2 workers, or None while they are (re)starting."""
        try:
            values = client.run(f)
        except Exception:
            return None
        return values if len(values) == 2 else None

    tags = wait_for(lambda: on_both(lambda: os.environ.get("ANALYSIS_TAG")), timeout=90)
    assert set(tags.values()) == {"ttbar-2025"}
    pids = on_both(os.getpid)
    client.restart()
    after = wait_for(lambda: on_both(os.getpid), timeout=90, what="2 restarted workers")
    assert set(after.values()).isdisjoint(pids.values())
    assert len(pool.jobs(f'DaskGatewayCluster == "{cluster.name}" && JobStatus == 2')) == 2
    client.close()
    cluster.shutdown()


def test_forwarded_credentials_reach_job_workers_but_no_job_ad(make_pool, tmp_path):
    pool = make_pool()
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnbmF0dXJl"
    cluster = pool.gw.new_cluster(forward_credentials=False)
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, what="2 HTCondor workers")
    summary = cluster.forward_credentials(token=token, discover=False)
    assert summary["bt"]["expires"] == "2100-01-01T00:00:00+00:00"
    client = cluster.get_client()

    def on_worker():
        path = os.environ["BEARER_TOKEN_FILE"]
        return open(path).read(), oct(os.stat(path).st_mode & 0o777)

    assert set(client.run(on_worker).values()) == {(token, "0o600")}
    cluster.scale(3)  # a worker that joins later gets them too
    wait_for(lambda: workers_of(cluster) == 3, what="a third worker")
    assert set(client.run(on_worker).values()) == {(token, "0o600")}
    ads = pool.schedd.query(f'DaskGatewayCluster == "{cluster.name}"')
    assert ads and not any(token in str(ad) for ad in ads)
    staged = [p for p in (tmp_path / "pool0" / "staging").rglob("*") if p.is_file()]
    assert not any(token.encode() in p.read_bytes() for p in staged)
    client.close()
    cluster.shutdown()


def job_process_group(pool: Pool, job: str) -> int:
    """The process group of a running job ("cluster.proc") on the stand-in: starter and job."""
    from tests.fakes.schedd import leftover_job_pids

    marker = f"/dir_{job}_".encode()
    for pid in leftover_job_pids(pool.control.workdir):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes():
                return os.getpgid(pid)
    raise AssertionError(f"no process of job {job}")


@needs_standin
def test_a_cluster_keeps_its_size_across_a_schedd_crash_and_restart(make_pool):
    pool = make_pool(slots=3)
    cluster = pool.gw.new_cluster()
    cluster.scale(3)
    wait_for(lambda: workers_of(cluster) == 3, what="3 HTCondor workers")
    jobs = {f"{j['ClusterId']}.{j['ProcId']}": j["DaskGatewayWorker"] for j in pool.jobs()}
    lost, kept = sorted(jobs)[0], sorted(jobs)[1:]

    pool.standin.kill_daemon()
    os.killpg(job_process_group(pool, lost), signal.SIGKILL)  # its execute node goes too
    time.sleep(3)  # status queries fail meanwhile
    pool.standin.restart()

    def settled():
        now = {f"{j['ClusterId']}.{j['ProcId']}": j for j in pool.jobs()}
        records = pool.gw.cluster_details(cluster.name)["pools"]["condor"]
        return (
            len(now) == 3
            and all(j["JobStatus"] == 2 for j in now.values())
            and workers_of(cluster) == 3
            and (records["running"], records["pending"], records["stopping"]) == (3, 0, 0)
            and now
        )

    now = wait_for(settled, timeout=60, what="3 running jobs and workers again")
    assert all(now[job]["DaskGatewayWorker"] == jobs[job] for job in kept)  # reconnected
    worker_names = {w["name"] for w in cluster.scheduler_info["workers"].values()}
    assert {j["DaskGatewayWorker"] for j in now.values()} == worker_names  # no orphan job
    client = cluster.get_client()
    assert sum(client.gather(client.map(lambda x: x * 3, range(10)))) == 135
    client.close()
    cluster.shutdown()
    wait_for(lambda: pool.jobs() == [], what="no jobs after stop")
