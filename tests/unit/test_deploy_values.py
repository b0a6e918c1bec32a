"""gateway_backend.deploy_values: the chart's values.json as the gateway's traitlets config.

The values come from the chart rendered by real Helm, so these tests also prove that what the
templates write is what the mapping reads. Every refusal must name the values key to change.
"""

from __future__ import annotations

import copy
import traceback
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config, PyFileConfigLoader

from gateway_backend.deploy_values import configure

from .chart_render import FULLNAME, NAMESPACE, find, render, rendered_values

ENV = {"ELASTIC_GATEWAY_SIMPLE_PASSWORD": "pw-from-secret", "ELASTIC_GATEWAY_STATE_DIR": "/state"}
HUB = {
    "jupyterhub": {"enabled": True},
    "gateway": {
        "auth": {"type": "jupyterhub", "jupyterhub": {"apiUrl": "http://hub:8081/hub/api"}}
    },
}


@pytest.fixture(scope="module")
def default_values() -> dict[str, Any]:
    return rendered_values(render())


def configured(values: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return configure(Config(), values, ENV if env is None else env)


def changed(values: dict[str, Any], *path: str, value: Any) -> dict[str, Any]:
    """A copy of ``values`` with the key at ``path`` set to ``value``."""
    values = copy.deepcopy(values)
    target = values
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return values


# -- what the default chart configures -------------------------------------------------------------
def test_default_values_run_the_elastic_backend_with_pods(default_values):
    c = configured(default_values)
    assert c.DaskGateway.backend_class == "gateway_backend.ElasticBackend"
    assert c.ElasticBackend.scheduler_launcher == "kubernetes"
    assert c.ElasticBackend.worker_pools == {"pods": {"launcher": "kubernetes"}}
    assert c.KubernetesLauncher.namespace == NAMESPACE
    assert c.KubernetesLauncher.gateway_id == FULLNAME
    assert "image" not in c.KubernetesLauncher  # the launcher's default image


def test_clusters_outlive_a_gateway_restart_by_default(default_values):
    assert configured(default_values).ElasticBackend.stop_clusters_on_shutdown is False


def test_ports_become_listen_addresses(default_values):
    c = configured(default_values)
    assert (c.DaskGateway.address, c.Proxy.address, c.Proxy.tcp_address) == (
        ":8000",
        ":8080",
        ":8786",
    )
    assert c.Proxy.prefix == ""


def test_schedulers_heartbeat_to_the_api_service(default_values):
    c = configured(default_values)
    assert c.ElasticBackend.api_url == f"http://{FULLNAME}-api.{NAMESPACE}.svc:8000/api"


def test_sqlite_database_lives_in_the_state_directory(default_values):
    c = configured(default_values)
    assert c.ElasticBackend.db_url == "sqlite:////state/gateway.sqlite"


def test_worker_logs_are_kept_in_the_state_directory(default_values):
    c = configured(default_values)
    assert c.ElasticBackend.log_directory == "/state/logs"


def test_external_database_url_comes_from_the_environment(default_values):
    env = {**ENV, "ELASTIC_GATEWAY_DB_URL": "postgresql+psycopg://gw:pw@db/gateway"}
    c = configured(default_values, env)
    assert c.ElasticBackend.db_url == "postgresql+psycopg://gw:pw@db/gateway"


def test_simple_auth_takes_the_password_from_the_environment(default_values):
    c = configured(default_values)
    assert c.DaskGateway.authenticator_class == "dask_gateway_server.auth.SimpleAuthenticator"
    assert c.SimpleAuthenticator.password == "pw-from-secret"


def test_simple_auth_without_a_password_is_refused(default_values):
    with pytest.raises(ValueError, match=r"gateway\.auth\.simple: .*anyone could log in"):
        configured(default_values, {"ELASTIC_GATEWAY_STATE_DIR": "/state"})


def test_jupyterhub_auth_uses_the_hub_url_and_token(default_values):
    values = rendered_values(render(HUB))
    c = configured(values, {"JUPYTERHUB_API_TOKEN": "hub-token"})
    assert c.DaskGateway.authenticator_class == (
        "gateway_backend.jupyterhub_auth.ElasticJupyterHubAuthenticator"
    )
    assert c.ElasticJupyterHubAuthenticator.jupyterhub_api_url == "http://hub:8081/hub/api"
    assert c.ElasticJupyterHubAuthenticator.jupyterhub_api_token == "hub-token"
    assert c.ElasticJupyterHubAuthenticator.jupyterhub_service_name == "dask-gateway"
    assert c.Proxy.prefix == "/services/dask-gateway"


def test_clusters_stop_with_their_hub_server_only_when_the_value_says_so():
    c = configured(rendered_values(render(HUB)), {"JUPYTERHUB_API_TOKEN": "hub-token"})
    assert c.ElasticJupyterHubAuthenticator.stop_clusters_with_server is False
    hub = copy.deepcopy(HUB)
    hub["gateway"]["auth"]["jupyterhub"]["stopClustersWithServer"] = True
    c = configured(rendered_values(render(hub)), {"JUPYTERHUB_API_TOKEN": "hub-token"})
    assert c.ElasticJupyterHubAuthenticator.stop_clusters_with_server is True


def test_a_stop_clusters_with_server_that_is_not_a_boolean_is_refused_naming_the_key():
    values = rendered_values(render(HUB))
    values["gateway"]["auth"]["jupyterhub"]["stopClustersWithServer"] = "yes"
    with pytest.raises(
        ValueError, match=r"gateway\.auth\.jupyterhub\.stopClustersWithServer: must"
    ):
        configured(values, {"JUPYTERHUB_API_TOKEN": "t"})


def test_jupyterhub_auth_without_a_token_is_refused():
    with pytest.raises(ValueError, match=r"gateway\.auth\.jupyterhub: JUPYTERHUB_API_TOKEN"):
        configured(rendered_values(render(HUB)), {})


def test_custom_authenticator_gets_its_class_and_checked_settings(default_values):
    custom = {
        "type": "custom",
        "custom": {
            "class": "dask_gateway_server.auth.SimpleAuthenticator",
            "config": {"password": "x"},
        },
    }
    c = configured(changed(default_values, "gateway", "auth", value=custom))
    assert c.DaskGateway.authenticator_class == "dask_gateway_server.auth.SimpleAuthenticator"
    assert c.SimpleAuthenticator.password == "x"
    custom["custom"]["config"] = {"passwd": "x"}
    with pytest.raises(ValueError, match=r"gateway\.auth\.custom\.config\.passwd: .*no setting"):
        configured(changed(default_values, "gateway", "auth", value=custom))


def test_log_level_sets_gateway_and_proxy(default_values):
    c = configured(changed(default_values, "gateway", "logLevel", value="DEBUG"))
    assert (c.DaskGateway.log_level, c.Proxy.log_level) == ("DEBUG", "debug")


def test_backend_values_become_elastic_backend_settings():
    backend = {
        "vos": {"cms": {"groups": ["cms"], "max_cores": 2000}},
        "usersWithoutVo": "cms",
        "maxWorkerCores": 8,
        "settings": {"cluster_status_period": 10},
        "clusterConfig": {"idle_timeout": 3600},
    }
    c = configured(rendered_values(render({"gateway": {"backend": backend}})))
    assert c.ElasticBackend.vos == {"cms": {"groups": ["cms"], "max_cores": 2000}}
    assert c.ElasticBackend.users_without_vo == "cms"
    assert c.ElasticBackend.max_worker_cores == 8
    assert c.ElasticBackend.cluster_status_period == 10
    assert c.ElasticClusterConfig.idle_timeout == 3600


def test_unused_launchers_are_not_configured(default_values):
    c = configured(default_values)
    assert "HTCondorLauncher" not in c and "SlurmLauncher" not in c and "LocalLauncher" not in c


def test_htcondor_pools_get_the_release_as_gateway_id():
    backend = {"schedulerLauncher": "local", "pools": {"condor": {"launcher": "htcondor"}}}
    c = configured(rendered_values(render({"gateway": {"backend": backend}})))
    assert c.HTCondorLauncher.gateway_id == FULLNAME
    assert c.LocalLauncher.work_directory == "/state/clusters"


def test_given_gateway_id_wins(default_values):
    values = changed(default_values, "gateway", "backend", "kubernetes", "gateway_id", value="gw1")
    assert configured(values).KubernetesLauncher.gateway_id == "gw1"


def test_extra_config_runs_last_in_name_order(default_values):
    snippets = {
        "b-second": "c.ElasticBackend.max_worker_cores += 1",
        "a-first": "c.ElasticBackend.max_worker_cores = c.ElasticBackend.max_worker_cores * 10",
    }
    c = configured(changed(default_values, "gateway", "extraConfig", value=snippets))
    assert c.ElasticBackend.max_worker_cores == 41


def test_extra_config_errors_name_the_snippet(default_values):
    values = changed(default_values, "gateway", "extraConfig", value={"broken": "1/0"})
    with pytest.raises(ZeroDivisionError) as failed:
        configured(values)
    frames = traceback.extract_tb(failed.value.__traceback__)
    assert frames[-1].filename == "<gateway.extraConfig.broken>"


# -- refusals name the key -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("gateway", "backend", "vos"),
            {"cms": {"max_cores": -1}},
            "gateway.backend.vos.cms.max_cores: must be a non-negative number",
        ),
        (
            ("gateway", "backend", "vos"),
            {"cms": {"max_cors": 1}},
            "gateway.backend.vos.cms: has unknown key(s) ['max_cors']",
        ),
        (
            ("gateway", "backend", "maxWorkerCores"),
            "eight",
            "gateway.backend.maxWorkerCores: The 'max_worker_cores' trait",
        ),
        (
            ("gateway", "backend", "kubernetes", "imagex"),
            "x",
            "gateway.backend.kubernetes.imagex: KubernetesLauncher has no setting 'imagex'",
        ),
        (
            ("gateway", "backend", "kubernetes", "gateway_id"),
            "no spaces",
            "gateway.backend.kubernetes.gateway_id: KubernetesLauncher.gateway_id='no spaces'",
        ),
        (
            ("gateway", "backend", "pools"),
            {"p": {"launcher": "kubernetes", "cpu_limits": "x"}},
            "gateway.backend.pools.p.cpu_limits: The 'cpu_limits' trait",
        ),
        (
            ("gateway", "backend", "pools"),
            {"p": {"launcher": "nosuch.Launcher"}},
            "gateway.backend.pools.p.launcher: 'nosuch.Launcher' cannot be imported",
        ),
        (
            ("gateway", "backend", "schedulerLauncher"),
            {"launcher": "kubernetes", "nope": 1},
            "gateway.backend.schedulerLauncher.nope: KubernetesLauncher has no setting",
        ),
        (
            ("gateway", "backend", "settings", "db_url"),
            "sqlite://",
            "gateway.backend.settings.db_url: set it with gateway.state.databaseUrl",
        ),
        (
            ("gateway", "backend", "settings", "worker_pools"),
            {},
            "gateway.backend.settings.worker_pools: set it with gateway.backend.pools",
        ),
        (
            ("gateway", "backend", "clusterConfig", "idle_timeout"),
            "soon",
            "gateway.backend.clusterConfig.idle_timeout: ",
        ),
        (("gateway", "backend", "poolz"), {}, "gateway.backend: unknown key(s) ['poolz']"),
        (("gateway", "ports", "api"), 0, "gateway.ports.api: must be a port number"),
        (("gateway", "logLevel"), "LOUD", "gateway.logLevel: must be one of"),
        (("gateway", "extraConfig", "x"), 42, "gateway.extraConfig.x: must be a non-empty string"),
        (("gateway", "auth", "type"), "bogus", "gateway.auth.type: must be one of"),
        (("surprise",), 1, "values.json: unknown key(s) ['surprise']"),
    ],
)
def test_bad_values_are_refused_naming_the_key(default_values, path, value, message):
    with pytest.raises(ValueError) as failed:
        configured(changed(default_values, *path, value=value))
    assert message in str(failed.value)


# -- the config file as dask-gateway-server loads it -----------------------------------------------
def test_rendered_config_file_loads_values_json_next_to_it(tmp_path: Path, monkeypatch):
    configmap = find(render({"gateway": {"backend": {"maxWorkerCores": 6}}}), "ConfigMap")
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    loader = PyFileConfigLoader("gateway_config.py", path=str(tmp_path))
    c = loader.load_config()
    assert c.ElasticBackend.max_worker_cores == 6
    assert c.SimpleAuthenticator.password == "pw-from-secret"
