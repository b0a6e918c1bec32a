"""Slurm submissions played by a hostile user: real gateway, proxy, HTTP API and Slurm.

User names come from the authenticator (upstream's SimpleAuthenticator takes any
name) and reach the jobs' comment; a cluster option reaches the workers'
environment. Either the gateway refuses with a 4xx before anything is submitted,
or the job holds exactly what was sent: no extra ``#SBATCH`` directive, no shell
expansion, no path.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
from dask_gateway import BasicAuth

from client_ext import ElasticGateway

from ..conftest import http, wait_for, workers_of
from ..slurm.fixtures import slurm_fixture  # noqa: F401
from .test_slurm import SlurmPool

pytestmark = pytest.mark.e2e

HOSTILE_CONFIG = """
from dask_gateway_server.options import Options, String

c.LocalLauncher.allow_shared_local_user = True
c.ElasticBackend.vos = {"cms": {"groups": ["cms"], "accounting_group": "group_cms"}}
c.ElasticBackend.users_without_vo = "cms"
c.ElasticBackend.cluster_options = Options(
    String("tag", default=""),
    handler=lambda options: {"environment": {"ANALYSIS_TAG": options.tag}},
)
"""


# The VO's Slurm account (our own daemons keep no accounting, so any name is accepted).
OWN_ACCOUNTS = 'c.SlurmLauncher.vo_accounts = {"cms": "cms-analysis"}\n'


@pytest.fixture
def pool(gateways, slurm, tmp_path):
    extra = HOSTILE_CONFIG + (OWN_ACCOUNTS if slurm.harness else "")
    pool = SlurmPool(gateways, slurm, tmp_path / "pool", extra, '{"slurm": {"launcher": "slurm"}}')
    try:
        yield pool
    finally:
        gateways.teardown()
        pool.close()


def client_as(pool: SlurmPool, username: str) -> ElasticGateway:
    password = pool.gateway.client_credentials()["password"]
    return ElasticGateway(pool.gateway.address, auth=BasicAuth(username, password))


#: Every option the gateway writes as ``#SBATCH`` (with a value) for this pool.
OUR_OPTIONS = {
    "--job-name",
    "--comment",
    "--array",
    "--export",
    "--nodes",
    "--ntasks",
    "--cpus-per-task",
    "--mem",
    "--chdir",
    "--output",
    "--partition",
    "--account",
}


def header_directives(script: str) -> list[str]:
    """The ``#SBATCH`` lines sbatch reads: those before the first command."""
    out = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            out.append(line)
        elif line.strip() and not line.startswith("#"):
            break
    return out


def test_a_user_name_with_a_newline_is_refused_before_anything_is_submitted(pool):
    name = "mallory\n#SBATCH --partition=parked\n#SBATCH --output=/etc/passwd"
    status, body = http(pool.gateway, "POST", "/api/v1/clusters/", {}, username=name)
    assert status in (403, 422), (status, body)
    assert pool.slurm.records(pool.gateway_id) == []


def test_a_tag_with_a_nul_byte_gets_a_422_naming_the_environment_variable(pool):
    body = {"cluster_options": {"tag": "x\u0000y"}}
    status, answer = http(pool.gateway, "POST", "/api/v1/clusters/", body, username="alice")
    assert status == 422, answer
    assert "environment variable ANALYSIS_TAG" in answer["error"]
    assert http(pool.gateway, "GET", "/api/v1/clusters/", username="alice") == (200, {})
    assert pool.slurm.records(pool.gateway_id) == []


def test_hostile_name_and_tag_arrive_verbatim_and_inject_no_directive_or_command(pool):
    marker = Path(f"/tmp/eg-pwned-{pool.gateway_id}")  # short: the comment keeps 200 characters
    name = f"m'al\"lory $(touch {marker}) `touch {marker}`;--partition=parked %j ../../x"
    tag = (
        f"a\n#SBATCH --partition=parked\n$(touch {marker})\n'; touch {marker}; '\"$HOME\" "
        "\\ ünï\t%x"
    )
    gw = client_as(pool, name)
    try:
        cluster = gw.new_cluster(tag=tag)
        cluster.scale(1)
        wait_for(lambda: workers_of(cluster) == 1, timeout=90, what="1 worker")
        client = cluster.get_client()
        seen = client.run(lambda: __import__("os").environ["ANALYSIS_TAG"])
        assert list(seen.values()) == [tag]
        client.close()
        (task,) = pool.tasks(cluster.name).values()
        script = pool.slurm.run("scontrol", "write", "batch_script", task.array_id, "-")
        sbatch_lines = [line for line in script.splitlines() if line.startswith("#SBATCH")]
        assert sbatch_lines == header_directives(script)  # none below the first command
        directives = dict(
            d.removeprefix("#SBATCH ").split("=", 1) for d in header_directives(script)
        )
        assert len(directives) == len(header_directives(script))  # each option once
        assert directives["--partition"] == pool.slurm.partition
        assert set(directives) <= OUR_OPTIONS, set(directives) - OUR_OPTIONS
        assert directives["--comment"] == task.comment
        if pool.slurm.harness:  # the VO's account, whoever the user claims to be
            assert directives["--account"] == "cms-analysis"
        owner = task.comment.split(";")[3]
        assert urllib.parse.unquote(owner) == name
        assert all(c.isalnum() or c in "%._-" for c in owner)
        assert not marker.exists()
        cluster.shutdown()
    finally:
        gw.close()
    wait_for(lambda: pool.tasks() == {}, what="no job after stop")
