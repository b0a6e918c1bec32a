"""Unit tests of the Kubernetes manifests: pure functions of explicit settings, no launcher."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

from dask_gateway_server.utils import FrozenAttrDict

from gateway_backend.cluster_config import ElasticClusterConfig
from gateway_backend.launchers.kubernetes.manifests import (
    ManifestSettings,
    cpu_quantity,
    credentials_secret,
    scheduler_pod,
    scheduler_service,
    worker_pod,
)

TOKEN = "very-secret-api-token-0123456789"
KEY = b"-----BEGIN PRIVATE KEY-----\nS3CR3TKEYMATERIAL\n-----END PRIVATE KEY-----\n"
SCHEDULER_UID = "uid-of-scheduler-pod"
API_URL = "http://gateway.example:8000/api"

# What a KubernetesLauncher with default traits, gateway_id "gw-test" and namespace
# "analysis" builds manifests from (unit/test_kubernetes_launcher checks that it does).
DEFAULT_SETTINGS = {
    "gateway_id": "gw-test",
    "namespace": "analysis",
    "image": "ghcr.io/dask/dask-gateway:2026.3.0",
    "image_pull_policy": "IfNotPresent",
    "image_pull_secrets": [],
    "service_account": "",
    "automount_service_account_token": False,
    "node_selector": {},
    "tolerations": [],
    "volumes": [],
    "volume_mounts": [],
    "extra_labels": {},
    "extra_annotations": {},
    "environment": {},
    "scheduler_extra_pod_config": {},
    "worker_extra_pod_config": {},
    "scheduler_extra_container_config": {},
    "worker_extra_container_config": {},
    "cpu_limits": True,
    "gpu_resource": "nvidia.com/gpu",
    "credentials_mount_path": "/etc/dask-credentials",
    "credentials_file_mode": 0o644,
    "termination_grace_period": 30,
    "scheduler_port": 8786,
    "dashboard_port": 8787,
    "api_port": 8788,
    "nanny": True,
    "worker_extra_args": [],
}


def make_settings(**overrides) -> ManifestSettings:
    return ManifestSettings(**{**DEFAULT_SETTINGS, **overrides})


def make_cluster(**config) -> SimpleNamespace:
    base = ElasticClusterConfig().to_dict()
    base.update(config)
    return SimpleNamespace(
        name="c0ffee",
        username="alice",
        token=TOKEN,
        tls_cert=b"-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----\n",
        tls_key=KEY,
        config=FrozenAttrDict(base),
        state={"uid": SCHEDULER_UID},
        scheduler_address="tls://10.1.2.3:8786",
    )


def env_of(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


def test_scheduler_pod_reads_token_and_tls_from_the_mounted_secret():
    pod = scheduler_pod(make_settings(), make_cluster(), api_url=API_URL, heartbeat_period=7)
    text = json.dumps(pod)
    assert TOKEN not in text and "S3CR3TKEYMATERIAL" not in text
    env = env_of(pod)
    assert env["DASK_GATEWAY_API_TOKEN"] == "/etc/dask-credentials/api-token"  # a path
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT"] == "/etc/dask-credentials/dask.crt"
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"] == "/etc/dask-credentials/dask.pem"
    assert env["DASK_GATEWAY_API_URL"] == "http://gateway.example:8000/api"
    assert env["DASK_GATEWAY_CLUSTER_NAME"] == "c0ffee"
    [volume] = pod["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "dask-credentials-c0ffee"
    assert [i["key"] for i in volume["secret"]["items"]] == ["dask.crt", "dask.pem", "api-token"]
    [mount] = pod["spec"]["containers"][0]["volumeMounts"]
    assert mount == {
        "name": "dask-credentials",
        "mountPath": "/etc/dask-credentials",
        "readOnly": True,
    }


def test_scheduler_pod_command_ports_labels_and_defaults():
    cluster = make_cluster(scheduler_cores=2, scheduler_memory=2**31)
    pod = scheduler_pod(make_settings(), cluster, api_url=API_URL, heartbeat_period=7)
    c = pod["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[:2] == ["dask", "scheduler"]
    assert cmd[cmd.index("--port") + 1] == "8786"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--dashboard-address") + 1] == "0.0.0.0:8787"
    assert cmd[cmd.index("--dg-api-address") + 1] == "0.0.0.0:8788"
    assert cmd[cmd.index("--dg-heartbeat-period") + 1] == "7"
    assert [p["containerPort"] for p in c["ports"]] == [8786, 8787, 8788]
    assert c["resources"] == {
        "requests": {"cpu": "2", "memory": str(2**31)},
        "limits": {"cpu": "2", "memory": str(2**31)},
    }
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    meta = pod["metadata"]
    assert meta["name"] == "dask-scheduler-c0ffee" and meta["namespace"] == "analysis"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "elastic-gateway",
        "app.kubernetes.io/component": "dask-scheduler",
        "gateway.dask.org/instance": "gw-test",
        "gateway.dask.org/cluster": "c0ffee",
    }
    assert meta["annotations"] == {"gateway.dask.org/user": "alice"}
    assert "ownerReferences" not in meta  # the scheduler pod owns the rest
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["terminationGracePeriodSeconds"] == 30


def test_ports_zero_listen_anywhere_and_declare_no_container_ports():
    settings = make_settings(scheduler_port=0, dashboard_port=0, api_port=0)
    cluster = make_cluster()
    pod = scheduler_pod(settings, cluster, api_url=API_URL, heartbeat_period=7)
    c = pod["spec"]["containers"][0]
    assert c["command"][c["command"].index("--port") + 1] == "0"
    assert "ports" not in c
    service = scheduler_service(settings, cluster, "uid-1")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (8786, 8786),
        (8787, 8787),
        (8788, 8788),
    ]


def test_pod_template_overrides_apply_to_scheduler_and_workers():
    settings = make_settings(
        image="registry.example/dask:1",
        image_pull_secrets=["regcred"],
        service_account="dask-runner",
        node_selector={"pool": "analysis"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "dask"}],
        volumes=[{"name": "cvmfs", "hostPath": {"path": "/cvmfs"}}],
        volume_mounts=[{"name": "cvmfs", "mountPath": "/cvmfs", "readOnly": True}],
        extra_labels={"team": "cms", "gateway.dask.org/cluster": "spoofed"},
        extra_annotations={"owner": "facility"},
        environment={"X509_CERT_DIR": "/cvmfs/grid.cern.ch/etc/grid-security/certificates"},
        worker_extra_pod_config={"priorityClassName": "opportunistic"},
        scheduler_extra_container_config={"securityContext": {"runAsNonRoot": True}},
    )
    cluster = make_cluster()
    scheduler = scheduler_pod(settings, cluster, api_url=API_URL, heartbeat_period=7)
    worker = worker_pod(settings, cluster, "w1", SCHEDULER_UID)
    for pod in (scheduler, worker):
        spec, c = pod["spec"], pod["spec"]["containers"][0]
        assert c["image"] == "registry.example/dask:1"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert spec["serviceAccountName"] == "dask-runner"
        assert spec["nodeSelector"] == {"pool": "analysis"}
        assert spec["tolerations"][0]["key"] == "dedicated"
        assert [v["name"] for v in spec["volumes"]] == ["dask-credentials", "cvmfs"]
        assert [m["mountPath"] for m in c["volumeMounts"]] == ["/etc/dask-credentials", "/cvmfs"]
        assert pod["metadata"]["labels"]["team"] == "cms"
        assert pod["metadata"]["labels"]["gateway.dask.org/cluster"] == "c0ffee"  # ours win
        assert pod["metadata"]["annotations"]["owner"] == "facility"
        assert env_of(pod)["X509_CERT_DIR"].startswith("/cvmfs/")
    assert worker["spec"]["priorityClassName"] == "opportunistic"
    assert scheduler["spec"].get("priorityClassName") is None
    sched_c = scheduler["spec"]["containers"][0]
    assert sched_c["securityContext"] == {"runAsNonRoot": True}
    assert "securityContext" not in worker["spec"]["containers"][0]


def test_worker_pod_is_owned_by_the_scheduler_and_never_sees_the_token():
    settings = make_settings(nanny=False, worker_extra_args=["--lifetime", "1h"])
    cluster = make_cluster(worker_cores=1.5, worker_memory=3 * 2**30)
    pod = worker_pod(settings, cluster, "w1", SCHEDULER_UID)
    text = json.dumps(pod)
    assert TOKEN not in text and "api-token" not in text and "S3CR3TKEYMATERIAL" not in text
    assert "DASK_GATEWAY_API_TOKEN" not in text
    meta = pod["metadata"]
    assert meta["name"] == "dask-worker-w1"
    assert meta["labels"]["gateway.dask.org/worker"] == "w1"
    assert meta["labels"]["app.kubernetes.io/component"] == "dask-worker"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "dask-scheduler-c0ffee",
            "uid": "uid-of-scheduler-pod",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    c = pod["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[:3] == ["dask", "worker", "tls://10.1.2.3:8786"]
    assert cmd[cmd.index("--name") + 1] == "w1"
    assert cmd[-3:] == ["--no-nanny", "--lifetime", "1h"]
    env = env_of(pod)
    assert env["DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"] == "/etc/dask-credentials/dask.pem"
    assert c["resources"]["requests"] == {"cpu": "1500m", "memory": str(3 * 2**30)}
    [volume] = pod["spec"]["volumes"]
    assert [i["key"] for i in volume["secret"]["items"]] == ["dask.crt", "dask.pem"]


METHOD = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"


def test_a_worker_pods_nanny_forks_its_worker_by_default():
    pod = worker_pod(make_settings(), make_cluster(), "w1", SCHEDULER_UID)
    assert env_of(pod)[METHOD] == "fork"


def test_spawn_restores_distributeds_own_worker_start():
    pod = worker_pod(make_settings(nanny_start_method="spawn"), make_cluster(), "w1", SCHEDULER_UID)
    assert env_of(pod)[METHOD] == "spawn"


def test_the_admins_environment_chooses_the_nannys_start_method_over_the_setting():
    settings = make_settings(environment={METHOD: "forkserver"})
    pod = worker_pod(settings, make_cluster(), "w1", SCHEDULER_UID)
    assert env_of(pod)[METHOD] == "forkserver"


def test_without_a_nanny_no_start_method_is_set():
    pod = worker_pod(make_settings(nanny=False), make_cluster(), "w1", SCHEDULER_UID)
    assert METHOD not in env_of(pod)


def test_worker_gpus_request_the_gpu_resource_and_cpu_limits_can_be_off():
    settings = make_settings(cpu_limits=False)
    gpu_pod = worker_pod(settings, make_cluster(worker_gpus=2), "w", SCHEDULER_UID)
    res = gpu_pod["spec"]["containers"][0]
    assert res["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert res["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "cpu" not in res["resources"]["limits"]
    plain_pod = worker_pod(settings, make_cluster(), "w", SCHEDULER_UID)
    plain = plain_pod["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in plain["requests"]


def test_secret_holds_cert_key_and_token_and_is_owned_by_the_scheduler():
    cluster = make_cluster()
    secret = credentials_secret(make_settings(), cluster, "uid-9")
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data == {"dask.crt": cluster.tls_cert, "dask.pem": KEY, "api-token": TOKEN.encode()}
    assert secret["metadata"]["name"] == "dask-credentials-c0ffee"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    assert secret["metadata"]["labels"]["gateway.dask.org/cluster"] == "c0ffee"


def test_service_selects_the_scheduler_pod_and_is_owned_by_it():
    settings = make_settings()
    cluster = make_cluster()
    service = scheduler_service(settings, cluster, "uid-9")
    assert service["metadata"]["name"] == "dask-c0ffee"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    scheduler = scheduler_pod(settings, cluster, api_url=API_URL, heartbeat_period=7)
    pod_labels = scheduler["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("tcp-comm", 8786),
        ("http-dashboard", 8787),
        ("http-api", 8788),
    ]


def test_cpu_quantities_are_whole_cores_or_millicores():
    assert cpu_quantity(1) == "1" and cpu_quantity(2.0) == "2" and cpu_quantity(0.25) == "250m"


def test_worker_pods_serve_no_dashboard_of_their_own_unless_asked():
    cluster = make_cluster()
    cmd = worker_pod(make_settings(), cluster, "w1", "uid-1")["spec"]["containers"][0]["command"]
    assert "--no-dashboard" in cmd and "--dashboard-address" not in cmd
    settings = make_settings(worker_dashboard=True)
    cmd = worker_pod(settings, cluster, "w1", "uid-1")["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--dashboard-address") + 1] == "0.0.0.0:0"
    assert "--no-dashboard" not in cmd
