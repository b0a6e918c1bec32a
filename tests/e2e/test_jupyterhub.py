"""JupyterHub as the front door: a real hub (PyPI ``jupyterhub``) and configurable-http-proxy.

The gateway is the hub's service ``dask-gateway``, configured as docs/jupyterhub.md says
(its hub-side block is this hub's config, its gateway block this gateway's), served under
``/services/dask-gateway`` by its own proxy, which the hub's proxy forwards that path to.
Analysts' code runs in single-user servers the hub spawns (tests/e2e/hub_singleuser.py, with
the environment and token the hub gives them), or in a subprocess with such an environment
and a token made through the hub's REST API. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator

import dask.config
import pytest

from client_ext import ElasticGateway

from .jupyterhub_env import PREFIX, SERVICE, Hub, request, running_hub

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with running_hub(tmp_path_factory.mktemp("jupyterhub")) as running:
        yield running


@pytest.fixture(scope="module")
def alices_cluster(hub: Hub) -> dict:
    """What the notebook in alice's single-user server saw (alice is in group cms)."""
    seen = hub.spawn("alice")
    assert "error" not in seen, seen["error"]
    return seen


def test_elastic_gateway_finds_the_gateway_through_the_hubs_service_route(hub, alices_cluster):
    assert alices_cluster["address"] == f"{hub.public_url}{PREFIX}"


def test_the_hubs_public_url_in_a_single_user_server_leads_to_the_service(hub, alices_cluster):
    assert alices_cluster["hub_service_address"] == f"{hub.public_url}{PREFIX}"


def test_a_cms_users_cluster_computes_on_a_worker(alices_cluster):
    assert alices_cluster["answer"] == 2


def test_a_cms_users_cluster_counts_against_vo_cms(alices_cluster):
    assert alices_cluster["details"]["options"]["vo"] == "cms"
    assert alices_cluster["quota"]["vos"]["cms"]["usage"]["clusters"] == 1


def test_the_dashboard_link_opens_through_the_hubs_route(hub, alices_cluster):
    assert alices_cluster["dashboard_link"].startswith(f"{hub.public_url}{PREFIX}/clusters/")
    assert alices_cluster["dashboard_status"] == 200
    assert alices_cluster["dashboard_is_bokeh"]


def test_the_gateways_hub_token_never_reaches_cluster_processes(alices_cluster):
    assert alices_cluster["worker_hub_tokens"] == [None]


def test_a_user_in_no_vo_is_refused_with_the_reason(hub):
    seen = hub.spawn("bob")
    assert "user bob belongs to no VO of this gateway (groups: none)" in seen.get("refused", ""), (
        seen
    )


@pytest.mark.parametrize("route", ["via_hub", "direct"])
def test_a_revoked_token_is_answered_401(hub, route):
    token = hub.token("alice")
    base = hub.gateway_via_hub if route == "via_hub" else hub.gateway_direct
    url = f"{base}/api/v1/clusters/"
    assert request(url, token["token"], scheme="jupyterhub")[0] == 200
    revoke = f"{hub.api_url}/users/alice/tokens/{token['id']}"
    assert request(revoke, hub.admin_token, "DELETE")[0] == 204
    assert request(url, token["token"], scheme="jupyterhub")[0] == 401


QUOTA_CELL = """
from client_ext import ElasticGateway
gw = ElasticGateway()
print(gw.address, sorted(gw.quota()["vos"]))
gw.close()
"""


def test_without_dask_gateway_address_the_hubs_public_url_leads_to_the_gateway(hub):
    result = hub.notebook(QUOTA_CELL, hub.token("alice")["token"])
    assert result.stdout.split() == [hub.gateway_via_hub, "['cms']"], result.stderr[-3000:]


def test_the_gateways_own_proxy_address_serves_the_hubs_users_too(hub):
    token = hub.token("alice")["token"]
    result = hub.notebook(QUOTA_CELL, token, DASK_GATEWAY__ADDRESS=hub.gateway_direct)
    assert result.stdout.split() == [hub.gateway_direct, "['cms']"], result.stderr[-3000:]


def test_a_token_without_access_to_the_service_gets_403_naming_the_scope(hub):
    # JupyterHub's default single-user token: the `server` role, no access to services.
    token = hub.token("alice", ["users:activity!user", "access:servers!server"])["token"]
    status, body = request(f"{hub.gateway_via_hub}/api/v1/clusters/", token, scheme="jupyterhub")
    assert status == 403
    assert f"access:services!service={SERVICE}" in body["error"]


REFUSAL_CELL = """
from client_ext import ElasticGateway, GatewayRefused
gw = ElasticGateway()
try:
    gw.new_cluster()
except GatewayRefused as err:
    print(err.status, err.message)
gw.close()
"""


def test_a_notebook_without_access_to_the_service_is_told_the_scope(hub):
    token = hub.token("alice", ["users:activity!user", "access:servers!server"])["token"]
    result = hub.notebook(REFUSAL_CELL, token)
    assert result.stdout.startswith("403 "), result.stdout + result.stderr[-3000:]
    assert f"lack access:services!service={SERVICE}. Ask the hub" in result.stdout


def test_a_notebook_with_a_revoked_token_is_told_so(hub):
    token = hub.token("alice")
    revoke = f"{hub.api_url}/users/alice/tokens/{token['id']}"
    assert request(revoke, hub.admin_token, "DELETE")[0] == 204
    result = hub.notebook(REFUSAL_CELL, token["token"])
    assert result.stdout.startswith("401 "), result.stdout + result.stderr[-3000:]
    assert "JupyterHub does not accept this token (revoked or expired?)" in result.stdout


def test_the_hub_sends_groups_for_a_token_without_group_scopes(hub):
    # JupyterHub 6 adds read:users:groups for the token's own user to /hub/api/user.
    token = hub.token("alice", [f"access:services!service={SERVICE}"])["token"]
    status, body = request(f"{hub.api_url}/user", token)
    assert status == 200 and body["groups"] == ["cms"]
    status, body = request(
        f"{hub.gateway_via_hub}/api/elastic/v1/quota", token, scheme="jupyterhub"
    )
    assert status == 200 and list(body["vos"]) == ["cms"]


def test_the_local_gateway_under_a_prefix_proves_its_identity_there(gateways, monkeypatch):
    # `elastic-gateway serve` with c.Proxy.prefix records its address with the prefix, and
    # the client's identity check (before the local password is sent) goes below it.
    gateway = gateways.start(f'c.Proxy.prefix = "{PREFIX}"\n', prefix=PREFIX)
    monkeypatch.setenv("ELASTIC_GATEWAY_STATE_DIR", str(gateway.state_dir))
    for name in ("ELASTIC_GATEWAY_ADDRESS", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with dask.config.set({"gateway.address": None}):
        gw = ElasticGateway()
    try:
        assert gw.address == gateway.address.rstrip("/")
        assert gw.address.endswith(PREFIX)
        assert gw.list_clusters() == []
    finally:
        gw.close()
