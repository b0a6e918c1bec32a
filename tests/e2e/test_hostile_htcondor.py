"""HTCondor submissions played by a hostile user: real gateway, proxy and HTTP API, schedd
stand-in.

User names come from the authenticator (upstream's SimpleAuthenticator takes any name)
and reach ``accounting_group_user``; a cluster option reaches the jobs' environment.
Either the gateway refuses with a 4xx that says what to change, before anything is
submitted, or the job ads hold exactly what was sent, with no macro expanded.

Refusals go through raw HTTP: dask_gateway's client can deadlock when the half-made
cluster object of a refused ``new_cluster()`` is collected in its event-loop thread
(``ElasticCluster.close`` then waits on that same loop).
"""

from __future__ import annotations

import json

import pytest
from dask_gateway import BasicAuth

from client_ext import ElasticGateway

from ..conftest import http, wait_for
from ..fakes.schedd.quoting import job_environment
from .test_htcondor import Pool

pytestmark = pytest.mark.e2e

# The admin lets analysts tag their workers: a free-text option into the environment.
HOSTILE_CONFIG = """
from dask_gateway_server.options import Options, String

c.ElasticBackend.vos = {"cms": {"groups": ["cms"], "accounting_group": "group_cms"}}
c.ElasticBackend.users_without_vo = "cms"
# Several users' schedulers as this one test account (no OS account per user here).
c.LocalLauncher.allow_shared_local_user = True
c.ElasticBackend.cluster_options = Options(
    String("tag", default=""),
    handler=lambda options: {"environment": {"ANALYSIS_TAG": options.tag}},
)
"""

# The finding: a newline turns the rest of the name into submit commands.
NEWLINE_NAME = (
    "mallory\ntransfer_input_files = $(transfer_input_files),{secrets}\n"
    "accounting_group = group_admin"
)
# Printable, so past any gateway-wide name rule: HTCondor's accounting rule must hold
# (macros, quotes, and a dot that would pick a subgroup of the VO's accounting group).
PRINTABLE_BAD_NAMES = ["$(transfer_input_files)", "$ENV(HOME)", 'mal"lory', "sub.alice"]

# Accepted as a value; must arrive unexpanded and unsplit.
HOSTILE_TAG = '$(transfer_input_files) it\'s\t$ENV(HOME) "q" a=b; x\\y ünï'


@pytest.fixture
def pool(gateways, tmp_path):
    # No slots: the jobs stay idle in the queue, where their ads can be read.
    pool = Pool(gateways, tmp_path / "pool", slots=0, extra=HOSTILE_CONFIG)
    try:
        yield pool
    finally:
        gateways.teardown()
        pool.close()


def client_as(pool: Pool, username: str) -> ElasticGateway:
    password = pool.gateway.client_credentials()["password"]
    return ElasticGateway(pool.gateway.address, auth=BasicAuth(username, password))


def all_ads(pool: Pool) -> list:
    """Every job this gateway submitted, also those that left the queue."""
    if pool.control is not None:
        return [
            ad for ad in pool.control.jobs() if ad.get("DaskGatewayInstance") == pool.gateway_id
        ]
    return pool.schedd.query(f'DaskGatewayInstance == "{pool.gateway_id}"')


def gateway_secrets(pool: Pool) -> list[str]:
    path = pool.gateway.state_dir / "secrets.json"
    values = [str(v) for v in json.loads(path.read_text()).values()]
    assert len(values) >= 3 and all(len(v) >= 16 for v in values)
    return values


def test_a_user_name_with_a_newline_is_refused_before_anything_is_submitted(pool):
    name = NEWLINE_NAME.format(secrets=pool.gateway.state_dir / "secrets.json")
    status, body = http(pool.gateway, "POST", "/api/v1/clusters/", {}, username=name)
    # 403 from the gateway-wide user-name rule, or 422 from the launcher's own check.
    assert status in (403, 422), (status, body)
    assert "user name 'mallory\\ntransfer_input_files" in body["error"]
    assert all_ads(pool) == []


def test_user_names_with_macros_quotes_or_dots_get_a_422_naming_the_setting(pool):
    for name in PRINTABLE_BAD_NAMES:
        status, body = http(pool.gateway, "POST", "/api/v1/clusters/", {}, username=name)
        assert status == 422, (name, status, body)
        assert "HTCondorLauncher.accounting_user_pattern" in body["error"]
        assert http(pool.gateway, "GET", "/api/v1/clusters/", username=name) == (200, {})
    assert all_ads(pool) == []
    if pool.control is not None:
        assert pool.control.counters()["submit"] == 0


def test_a_tag_with_a_newline_gets_a_422_naming_the_environment_variable(pool):
    body = {"cluster_options": {"tag": "x\n+Injected = true"}}
    status, answer = http(pool.gateway, "POST", "/api/v1/clusters/", body, username="alice")
    assert status == 422, answer
    assert "environment variable ANALYSIS_TAG" in answer["error"]
    assert http(pool.gateway, "GET", "/api/v1/clusters/", username="alice") == (200, {})


def test_hostile_tag_arrives_verbatim_and_jobs_carry_exactly_the_owners_accounting(pool, tmp_path):
    gw = client_as(pool, "alice")
    try:
        cluster = gw.new_cluster(tag=HOSTILE_TAG)
        cluster.scale(2)
        wait_for(lambda: len(pool.jobs()) == 2, what="2 queued jobs")
        staged = tmp_path / "pool" / "staging" / cluster.name
        for ad in all_ads(pool):
            assert job_environment(ad)["ANALYSIS_TAG"] == HOSTILE_TAG
            assert (ad["AcctGroup"], ad["AcctGroupUser"]) == ("group_cms", "alice")
            assert ad["AccountingGroup"] == "group_cms.alice"
            assert ad["TransferInput"] == f"{staged}/dask.crt, {staged}/dask.pem"
        cluster.shutdown()
    finally:
        gw.close()


def test_no_gateway_secret_appears_in_any_job_ad(pool):
    gw = client_as(pool, "alice")
    try:
        cluster = gw.new_cluster(tag=HOSTILE_TAG)
        cluster.scale(1)
        wait_for(lambda: len(pool.jobs()) == 1, what="1 queued job")
        texts = [str(ad) for ad in all_ads(pool)]
        assert texts
        for secret in [*gateway_secrets(pool), "secrets.json", "DASK_GATEWAY_API_TOKEN"]:
            assert not any(secret in text for text in texts), "a gateway secret is in a job ad"
        cluster.shutdown()
    finally:
        gw.close()
