"""docs/jupyterhub.md's z2jh values say what its JupyterHub config block says.

The Python block is a real hub's configuration in tests/e2e/test_jupyterhub.py; the z2jh
YAML is the same configuration for the Helm chart, so it must agree with it key by key.
"""

from __future__ import annotations

import re

import pytest
import yaml
from traitlets.config import Config

from ..docs_snippets import REPO, hub_config_block

DOC = REPO / "docs" / "jupyterhub.md"


@pytest.fixture
def hub_config(monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("DASK_GATEWAY_HUB_TOKEN", "not-a-real-token")
    config = Config()
    exec(compile(hub_config_block(), "jupyterhub.md", "exec"), {"c": config})
    return config


@pytest.fixture
def z2jh() -> dict:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)]
    (values,) = [b for b in blocks if "hub" in b and "singleuser" in b]
    return values


def test_the_service_is_the_same(hub_config, z2jh):
    (service,) = hub_config.JupyterHub.services
    assert list(z2jh["hub"]["services"]) == [service["name"]]
    assert z2jh["hub"]["services"][service["name"]]["display"] is service["display"]


def test_the_user_role_is_the_same(hub_config, z2jh):
    (role,) = hub_config.JupyterHub.load_roles
    assert z2jh["hub"]["loadRoles"][role["name"]]["scopes"] == role["scopes"]


def test_the_server_token_scopes_are_the_same(hub_config, z2jh):
    scopes = z2jh["hub"]["config"]["Spawner"]["server_token_scopes"]
    assert scopes == hub_config.Spawner.server_token_scopes


def test_the_single_user_environment_is_the_same(hub_config, z2jh):
    assert z2jh["singleuser"]["extraEnv"] == hub_config.Spawner.environment


def test_the_chart_values_render_a_gateway_behind_the_hub():
    """The page's values for the Elastic Gateway chart pass its schema and configure the hub."""
    from traitlets.config import Config

    from gateway_backend.deploy_values import configure

    from .chart_render import gateway_container, render, rendered_values

    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)]
    (values,) = [b for b in blocks if "gateway" in b and "jupyterhub" in b]
    objects = render(values)
    env = {e["name"]: e for e in gateway_container(objects)["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "dask-gateway-hub-token",
        "key": "jupyterhub-api-token",
    }
    config = configure(Config(), rendered_values(objects), env={"JUPYTERHUB_API_TOKEN": "t"})
    auth = values["gateway"]["auth"]["jupyterhub"]
    assert config.DaskGateway.authenticator_class.endswith("ElasticJupyterHubAuthenticator")
    assert config.ElasticJupyterHubAuthenticator.jupyterhub_api_url == auth["apiUrl"]
    assert config.ElasticJupyterHubAuthenticator.jupyterhub_service_name == auth["serviceName"]
    assert config.Proxy.prefix == values["jupyterhub"]["prefix"]


def test_the_gateway_servers_role_is_the_same():
    """stop_clusters_with_server: the z2jh role is the hub block's role, scope by scope."""
    from ..docs_snippets import server_stop_blocks

    hub_block, _ = server_stop_blocks()
    config = Config()
    config.JupyterHub.load_roles = []
    exec(compile(hub_block, "jupyterhub.md", "exec"), {"c": config})
    (role,) = config.JupyterHub.load_roles
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)]
    (values,) = [b for b in blocks if role["name"] in b.get("hub", {}).get("loadRoles", {})]
    z2jh_role = values["hub"]["loadRoles"][role["name"]]
    assert (z2jh_role["services"], z2jh_role["scopes"]) == (role["services"], role["scopes"])
