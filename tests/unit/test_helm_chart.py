"""The Helm chart, rendered by real Helm and checked against Kubernetes 1.36's schemas.

deploy/helm/elastic-gateway is rendered offline with helm-python-sdk (Helm's Go SDK) with the
default values and the value sets sites use; every object must be valid Kubernetes 1.36
(kubernetes-validate, strict: no unknown fields). The rest says what the objects must do:
secrets only through secretKeyRef, non-root and read-only, probes, ports, one replica, the
RBAC of deploy/rbac.yaml, and bad values refused by the schema with the key's name.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from dask_gateway_server.backends.db_base import _normalize_encrypt_key

from .chart_render import (
    CHART,
    FULLNAME,
    NAMESPACE,
    REPO,
    find,
    gateway_container,
    kinds,
    render,
)

KUBERNETES_VERSION = "1.36"
SENTINEL = "Sentinel-7c1f0e"  # inside every plain secret value below; must never leak

HTCONDOR_ONLY = {
    "schedulerLauncher": "local",
    "pools": {"condor": {"launcher": "htcondor", "max_workers": 500}},
    "htcondor": {"schedd_name": "schedd.example.org"},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "nodeport": {
        "service": {
            "type": "NodePort",
            "http": {"port": 80, "nodePort": 30080},
            "tls": {"port": 8786, "nodePort": 30786},
        },
    },
    "loadbalancer": {
        "service": {
            "type": "LoadBalancer",
            "loadBalancerIP": "192.0.2.10",
            "loadBalancerSourceRanges": ["192.0.2.0/24"],
            "annotations": {"example.org/lb": "internal"},
        },
    },
    "external-db-existing-secret": {
        "gateway": {"state": {"existingSecret": "gateway-db", "existingSecretKey": "url"}},
    },
    "external-db-url": {
        "gateway": {"state": {"databaseUrl": f"postgresql+psycopg://gw:{SENTINEL}@db/gateway"}},
    },
    "existing-gateway-secret": {"gateway": {"existingSecret": "site-gateway-secrets"}},
    "htcondor-only": {"gateway": {"backend": HTCONDOR_ONLY}},
    "servicemonitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}
    },
    "jupyterhub": {
        "jupyterhub": {"enabled": True},
        "gateway": {
            "auth": {
                "type": "jupyterhub",
                "jupyterhub": {"apiUrl": "http://hub.jhub.svc:8081/hub/api", "apiToken": SENTINEL},
            }
        },
    },
    "simple-password": {"gateway": {"auth": {"simple": {"password": SENTINEL}}}},
    "pods-elsewhere": {"gateway": {"backend": {"kubernetes": {"namespace": "dask-pods"}}}},
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VALUE_SETS[request.param])


def secret_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in find(objects, "Secret")["data"].items()}


# -- validity -------------------------------------------------------------------------------------
def test_every_object_is_valid_kubernetes_1_36(rendered):
    _, objects = rendered
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds(objects)
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            # A prometheus-operator CRD: not in Kubernetes' own schemas; checked in
            # test_service_monitor_scrapes_the_api_port_with_the_metrics_token.
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_helm_lint_passes_strict():
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBERNETES_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == []


def test_helm_lint_passes_for_every_value_set():
    for name, values in VALUE_SETS.items():
        report = helm.lint(CHART, values, strict=True)
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], name


# -- bad values -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway": {"replicas": 2}}, "at '/gateway/replicas': value must be 1"),
        ({"service": {"type": "Foo"}}, "at '/service/type': value must be one of"),
        ({"service": {"http": {"port": -1}}}, "at '/service/http/port': minimum"),
        ({"gateway": {"ports": {"api": 70000}}}, "at '/gateway/ports/api': maximum"),
        ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
        ({"gateway": {"auth": {"type": "bogus"}}}, "at '/gateway/auth/type': value must be one of"),
        (
            {"gateway": {"backend": {"maxWorkerCores": "8"}}},
            "at '/gateway/backend/maxWorkerCores': got string, want integer",
        ),
        (
            {"gateway": {"backend": {"vos": {"cms": "lots"}}}},
            "at '/gateway/backend/vos/cms': got string, want object",
        ),
    ],
    ids=[
        "replicas",
        "service-type",
        "negative-port",
        "port-range",
        "unknown-key",
        "auth-type",
        "string-cores",
        "vo-not-a-dict",
    ],
)
def test_bad_values_fail_with_the_schema_message_naming_the_key(values, message):
    with pytest.raises(helm.HelmValuesError) as failed:
        render(values)
    assert message in str(failed.value)


def test_schema_accepts_the_default_values():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        (
            {"gateway": {"existingSecret": "mine", "state": {"databaseUrl": "sqlite://"}}},
            "gateway.state.databaseUrl",
        ),
        (
            {"gateway": {"existingSecret": "mine", "auth": {"simple": {"password": "x"}}}},
            "gateway.auth.simple.password",
        ),
        ({"gateway": {"auth": {"type": "jupyterhub"}}}, "gateway.auth.jupyterhub.apiUrl"),
        ({"gateway": {"auth": {"type": "kerberos"}}}, "gateway.auth.kerberos.keytabSecret"),
        (
            {"gateway": {"state": {"databaseUrl": "sqlite://", "existingSecret": "db"}}},
            "gateway.state.existingSecret",
        ),
        (
            {"gateway": {"backend": {"settings": {"metrics_api_token": "t"}}}},
            "gateway.backend.settings.metrics_api_token would put a secret into the ConfigMap",
        ),
        (
            {"jupyterhub": {"enabled": True, "serviceName": "gw", "prefix": "/services/dg"}},
            'jupyterhub.prefix "/services/dg" must end with /services/gw',
        ),
    ],
    ids=[
        "db-url-needs-chart-secret",
        "password-needs-chart-secret",
        "hub-url",
        "keytab",
        "two-databases",
        "secret-in-settings",
        "hub-prefix",
    ],
)
def test_inconsistent_values_fail_naming_the_key(values, key):
    with pytest.raises(helm.HelmRenderError) as failed:
        render(values)
    assert key in str(failed.value)


# -- secrets --------------------------------------------------------------------------------------
def test_plain_secret_values_appear_only_in_the_chart_secret(rendered):
    name, objects = rendered
    for obj in objects:
        text = json.dumps(obj)
        if obj["kind"] == "Secret":
            continue
        assert SENTINEL not in text, f"{name}: secret value in {obj['kind']}"
    if SENTINEL in json.dumps(VALUE_SETS[name]):
        assert any(SENTINEL in v for v in secret_data(objects).values())


def test_environment_carries_secrets_only_as_secret_key_refs(rendered):
    _, objects = rendered
    env = {e["name"]: e for e in gateway_container(objects)["env"]}
    plain = {name for name, e in env.items() if "value" in e}
    assert plain <= {"ELASTIC_GATEWAY_STATE_DIR", "ELASTIC_GATEWAY_KERBEROS_KEYTAB"}
    for name in ("DASK_GATEWAY_ENCRYPT_KEYS", "ELASTIC_GATEWAY_METRICS_TOKEN"):
        assert set(env[name]["valueFrom"]) == {"secretKeyRef"}


def test_generated_encryption_key_is_one_that_dask_gateway_accepts():
    data = secret_data(render())
    assert len(_normalize_encrypt_key(data["encrypt-keys"])) == 44
    assert len(data["metrics-token"]) >= 32 and len(data["simple-password"]) >= 32


def test_generated_secrets_differ_between_renders():
    assert secret_data(render())["encrypt-keys"] != secret_data(render())["encrypt-keys"]


def test_chart_secret_survives_uninstall_with_the_database_it_decrypts():
    objects = render()
    for kind in ("Secret", "PersistentVolumeClaim"):
        assert find(objects, kind)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_existing_gateway_secret_is_referenced_and_no_secret_is_rendered():
    objects = render(VALUE_SETS["existing-gateway-secret"])
    assert "Secret" not in kinds(objects)
    env = {e["name"]: e for e in gateway_container(objects)["env"]}
    for name, key in [
        ("DASK_GATEWAY_ENCRYPT_KEYS", "encrypt-keys"),
        ("ELASTIC_GATEWAY_SIMPLE_PASSWORD", "simple-password"),
    ]:
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": "site-gateway-secrets",
            "key": key,
        }


def test_external_database_url_comes_from_its_secret_and_needs_no_volume_claim():
    objects = render(VALUE_SETS["external-db-existing-secret"])
    env = {e["name"]: e for e in gateway_container(objects)["env"]}
    assert env["ELASTIC_GATEWAY_DB_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "gateway-db",
        "key": "url",
    }
    assert "PersistentVolumeClaim" not in kinds(objects)
    volumes = find(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "state", "emptyDir": {}} in volumes


def test_hub_token_comes_from_the_chart_secret_under_its_key():
    objects = render(VALUE_SETS["jupyterhub"])
    env = {e["name"]: e for e in gateway_container(objects)["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "jupyterhub-api-token",
    }
    assert secret_data(objects)["jupyterhub-api-token"] == SENTINEL
    assert "ELASTIC_GATEWAY_SIMPLE_PASSWORD" not in env


# -- the pod --------------------------------------------------------------------------------------
def test_gateway_runs_non_root_with_a_read_only_root_filesystem(rendered):
    _, objects = rendered
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    container = gateway_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/elastic-gateway", "/tmp"}


def test_one_replica_replaced_by_recreate(rendered):
    _, objects = rendered
    spec = find(objects, "Deployment")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}


def test_gateway_command_takes_the_config_path_in_args_and_state_as_working_dir(rendered):
    _, objects = rendered
    container = gateway_container(objects)
    assert container["command"] == ["dask-gateway-server"]
    assert container["args"] == ["-f", "/etc/elastic-gateway/gateway_config.py"]
    assert container["workingDir"] == "/var/lib/elastic-gateway"


def test_probes_get_api_health_on_the_http_port():
    container = gateway_container(render())
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/api/health", "port": "http"}


def test_probes_behind_jupyterhub_use_the_proxy_prefix():
    container = gateway_container(render(VALUE_SETS["jupyterhub"]))
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/services/dask-gateway/api/health"


def test_pod_gets_no_environment_variables_for_the_namespace_services():
    pod = find(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


def test_service_account_token_is_mounted_only_with_a_kubernetes_launcher():
    def automount(values):
        return find(render(values), "Deployment")["spec"]["template"]["spec"][
            "automountServiceAccountToken"
        ]

    assert automount({}) is True
    assert automount(VALUE_SETS["htcondor-only"]) is False


# -- services -------------------------------------------------------------------------------------
def test_service_target_ports_are_container_port_names(rendered):
    _, objects = rendered
    container_ports = {p["name"]: p["containerPort"] for p in gateway_container(objects)["ports"]}
    assert set(container_ports) == {"api", "http", "tls"}
    public = find(objects, "Service")["spec"]
    api = find(objects, "Service", f"{FULLNAME}-api")["spec"]
    assert [(p["name"], p["targetPort"]) for p in public["ports"]] == [
        ("http", "http"),
        ("tls", "tls"),
    ]
    assert [(p["name"], p["targetPort"]) for p in api["ports"]] == [("api", "api")]
    assert api["ports"][0]["port"] == container_ports["api"] and api["type"] == "ClusterIP"
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for spec in (public, api):
        assert spec["selector"].items() <= pod_labels.items()


def test_node_port_service_sets_the_given_node_ports():
    spec = find(render(VALUE_SETS["nodeport"]), "Service")["spec"]
    assert spec["type"] == "NodePort"
    assert {p["name"]: p["nodePort"] for p in spec["ports"]} == {"http": 30080, "tls": 30786}


def test_load_balancer_service_sets_address_and_source_ranges():
    service = find(render(VALUE_SETS["loadbalancer"]), "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerIP"] == "192.0.2.10"
    assert service["spec"]["loadBalancerSourceRanges"] == ["192.0.2.0/24"]
    assert service["metadata"]["annotations"] == {"example.org/lb": "internal"}


def test_cluster_ip_service_has_no_node_ports_even_when_given():
    values = {"service": {"http": {"port": 80, "nodePort": 30080}}}
    spec = find(render(values), "Service")["spec"]
    assert spec["type"] == "ClusterIP"
    assert all("nodePort" not in p for p in spec["ports"])


def test_service_monitor_scrapes_the_api_port_with_the_metrics_token():
    objects = render(VALUE_SETS["servicemonitor"])
    monitor = find(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "api" and endpoint["path"] == "/api/elastic/v1/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": FULLNAME, "key": "metrics-token"}
    api_service = find(objects, "Service", f"{FULLNAME}-api")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        api_service["metadata"]["labels"].items()
    )
    assert "ServiceMonitor" not in kinds(render())


# -- RBAC -----------------------------------------------------------------------------------------
def test_role_has_exactly_the_rules_of_deploy_rbac_yaml():
    docs = yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text())
    (reference,) = [d for d in docs if d and d["kind"] == "Role"]
    assert find(render(), "Role")["rules"] == reference["rules"]


def test_role_is_in_the_pods_namespace_and_binds_the_gateway_account():
    objects = render(VALUE_SETS["pods-elsewhere"])
    role, binding = find(objects, "Role"), find(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "dask-pods"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME


def test_no_role_without_a_kubernetes_launcher():
    assert not {"Role", "RoleBinding"} & kinds(render(VALUE_SETS["htcondor-only"]))


def test_no_role_when_rbac_create_is_off():
    assert not {"Role", "RoleBinding"} & kinds(render({"rbac": {"create": False}}))


def test_kubernetes_pool_alone_gets_the_role():
    backend = {"schedulerLauncher": "local", "pools": {"pods": {"launcher": "kubernetes"}}}
    assert "Role" in kinds(render({"gateway": {"backend": backend}}))


# -- names ----------------------------------------------------------------------------------------
def test_release_named_like_the_chart_keeps_its_name():
    objects = render(name="elastic-gateway")
    assert find(objects, "Deployment", "elastic-gateway")
    assert find(objects, "Service", "elastic-gateway-api")


def test_objects_carry_the_standard_labels(rendered):
    _, objects = rendered
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "elastic-gateway"
        assert labels["app.kubernetes.io/instance"] == "eg"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] and labels["app.kubernetes.io/component"]
