"""Where ``ElasticGateway()`` finds the gateway inside a JupyterHub single-user server."""

from __future__ import annotations

from collections.abc import Iterator

import dask.config
import pytest

from client_ext import ElasticGateway
from client_ext.auth import hub_service_address, resolve_address_and_auth

HUB = "https://hub.example.org/jupyter/hub/"


@pytest.fixture
def single_user_server(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment JupyterHub gives a single-user server (hub with a public_url)."""
    for name in ("ELASTIC_GATEWAY_ADDRESS", "ELASTIC_GATEWAY_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ELASTIC_GATEWAY_STATE_DIR", str(tmp_path))  # no local gateway
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "the-servers-token")
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://hub:8081/jupyter/hub/api")
    monkeypatch.setenv("JUPYTERHUB_PUBLIC_HUB_URL", HUB)
    with dask.config.set({"gateway.address": None, "gateway.proxy-address": None}):
        yield


def test_the_gateway_is_the_hubs_service_under_the_public_url(single_user_server):
    assert hub_service_address() == "https://hub.example.org/jupyter/services/dask-gateway"


def test_the_service_name_comes_from_the_environment(single_user_server, monkeypatch):
    monkeypatch.setenv("ELASTIC_GATEWAY_SERVICE_NAME", "gateway-b")
    assert hub_service_address() == "https://hub.example.org/jupyter/services/gateway-b"


def test_no_public_hub_url_means_no_guess_from_the_api_url(single_user_server, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_PUBLIC_HUB_URL")
    assert hub_service_address() is None


def test_outside_a_single_user_server_nothing_is_derived(single_user_server, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN")
    assert hub_service_address() is None


def test_dask_config_address_wins_over_the_hub(single_user_server):
    with dask.config.set({"gateway.address": "http://proxy-public/services/dask-gateway"}):
        assert resolve_address_and_auth()[0] == "http://proxy-public/services/dask-gateway"


def test_a_hub_derived_address_without_a_tls_proxy_address_says_what_to_set(
    single_user_server,
):
    with pytest.raises(ValueError, match="set DASK_GATEWAY__PROXY_ADDRESS"):
        ElasticGateway()


def test_a_hub_derived_address_with_the_tls_proxy_address_is_used(single_user_server):
    with dask.config.set({"gateway.proxy-address": "gateway://dask.example.org:8786"}):
        gw = ElasticGateway()
    try:
        assert gw.address == "https://hub.example.org/jupyter/services/dask-gateway"
        assert gw.proxy_address == "gateway://dask.example.org:8786"
    finally:
        gw.close()
