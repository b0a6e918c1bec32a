"""The objects the launcher creates per cluster, as pure functions of explicit inputs.

Per cluster: a scheduler Pod, a Service in front of it and a Secret holding the
cluster's TLS certificate, key and API token, mounted as files (never plain
environment values). The Service, the Secret and every worker Pod carry an
owner reference to the scheduler Pod, so deleting it garbage-collects the
whole cluster even if the gateway is gone. Nothing here calls the API or
reads the launcher: the same inputs give the same manifests.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dask_gateway_server.backends.kubernetes.utils import merge_json_objects as merge

from ...commands import (
    CERT_FILE,
    KEY_FILE,
    scheduler_command,
    scheduler_env,
    worker_command,
    worker_env,
)

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "gateway.dask.org/instance"
CLUSTER_LABEL = "gateway.dask.org/cluster"
WORKER_LABEL = "gateway.dask.org/worker"
USER_ANNOTATION = "gateway.dask.org/user"
MANAGER = "elastic-gateway"
SCHEDULER = "dask-scheduler"
WORKER = "dask-worker"
TOKEN_FILE = "api-token"


@dataclass(frozen=True)
class ManifestSettings:
    """The admin's settings every manifest is built from.

    Field names are ``KubernetesLauncher``'s trait names (their help texts say
    what each does); ``namespace`` is the resolved one, never empty.
    """

    gateway_id: str
    namespace: str
    image: str
    image_pull_policy: str
    image_pull_secrets: Sequence[str]
    service_account: str
    automount_service_account_token: bool
    node_selector: Mapping[str, Any]
    tolerations: Sequence[Mapping[str, Any]]
    volumes: Sequence[Mapping[str, Any]]
    volume_mounts: Sequence[Mapping[str, Any]]
    extra_labels: Mapping[str, Any]
    extra_annotations: Mapping[str, Any]
    environment: Mapping[str, Any]
    scheduler_extra_pod_config: Mapping[str, Any]
    worker_extra_pod_config: Mapping[str, Any]
    scheduler_extra_container_config: Mapping[str, Any]
    worker_extra_container_config: Mapping[str, Any]
    cpu_limits: bool
    gpu_resource: str
    credentials_mount_path: str
    credentials_file_mode: int
    termination_grace_period: int
    scheduler_port: int
    dashboard_port: int
    api_port: int
    nanny: bool
    worker_extra_args: Sequence[str]
    nanny_start_method: str = "fork"
    worker_dashboard: bool = False


# -- names, labels and the selectors that find them ---------------------------------------------
def scheduler_pod_name(cluster_name: str) -> str:
    return f"dask-scheduler-{cluster_name}"


def worker_pod_name(worker_name: str) -> str:
    return f"dask-worker-{worker_name}"


def service_name(cluster_name: str) -> str:
    return f"dask-{cluster_name}"


def secret_name(cluster_name: str) -> str:
    return f"dask-credentials-{cluster_name}"


def gateway_selector(gateway_id: str) -> str:
    """Everything this gateway created: what its watch and clean-ups select."""
    return f"{MANAGED_BY_LABEL}={MANAGER},{INSTANCE_LABEL}={gateway_id}"


def cluster_workers_selector(gateway_id: str, cluster_name: str) -> str:
    """The worker pods of one cluster, including any the database has no record of."""
    return (
        f"{gateway_selector(gateway_id)},{CLUSTER_LABEL}={cluster_name},{COMPONENT_LABEL}={WORKER}"
    )


def labels(
    settings: ManifestSettings, cluster_name: str, component: str, worker_name: str | None = None
) -> dict[str, str]:
    """The admin's extra labels, then ours (ours win: the watch selects by them)."""
    out = {str(k): str(v) for k, v in settings.extra_labels.items()}
    out.update(
        {
            MANAGED_BY_LABEL: MANAGER,
            INSTANCE_LABEL: settings.gateway_id,
            CLUSTER_LABEL: cluster_name,
            COMPONENT_LABEL: component,
        }
    )
    if worker_name is not None:
        out[WORKER_LABEL] = worker_name
    return out


def owner_reference(cluster_name: str, uid: str) -> dict[str, Any]:
    """The scheduler pod as owner: deleting it garbage-collects the cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": scheduler_pod_name(cluster_name),
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    settings: ManifestSettings,
    cluster: Cluster,
    name: str,
    component: str,
    worker_name: str | None = None,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    annotations = {str(k): str(v) for k, v in settings.extra_annotations.items()}
    annotations[USER_ANNOTATION] = cluster.username
    meta = {
        "name": name,
        "namespace": settings.namespace,
        "labels": labels(settings, cluster.name, component, worker_name),
        "annotations": annotations,
    }
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return meta


# -- pod parts -------------------------------------------------------------------------------------
def cpu_quantity(cores: float) -> str:
    """A Kubernetes CPU quantity: whole cores as integers, fractions in millicores."""
    if float(cores).is_integer():
        return str(int(cores))
    return f"{round(float(cores) * 1000)}m"


def _credentials_path(settings: ManifestSettings, filename: str) -> str:
    return f"{settings.credentials_mount_path.rstrip('/')}/{filename}"


def _credentials_volume(
    settings: ManifestSettings, cluster_name: str, files: Sequence[str]
) -> dict[str, Any]:
    return {
        "name": "dask-credentials",
        "secret": {
            "secretName": secret_name(cluster_name),
            "defaultMode": settings.credentials_file_mode,
            "items": [{"key": f, "path": f} for f in files],
        },
    }


def _resources(
    settings: ManifestSettings, cores: float, memory: int, gpus: int = 0
) -> dict[str, Any]:
    requests = {"cpu": cpu_quantity(cores), "memory": str(int(memory))}
    limits = {"memory": str(int(memory))}
    if settings.cpu_limits:
        limits["cpu"] = requests["cpu"]
    if gpus:
        requests[settings.gpu_resource] = limits[settings.gpu_resource] = str(int(gpus))
    return {"requests": requests, "limits": limits}


def _container(
    settings: ManifestSettings,
    name: str,
    command: list[str],
    env: Mapping[str, str],
    resources: dict,
    image: str = "",
) -> dict[str, Any]:
    return {
        "name": name,
        # A profile's image (kept in the cluster's config), else the launcher's.
        "image": image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [{"name": k, "value": str(v)} for k, v in env.items()],
        "resources": resources,
        "volumeMounts": [
            {
                "name": "dask-credentials",
                "mountPath": settings.credentials_mount_path,
                "readOnly": True,
            },
            *copy.deepcopy(settings.volume_mounts),
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod_spec(settings: ManifestSettings, container: dict, credentials: dict) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": settings.automount_service_account_token,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_period,
        "containers": [container],
        "volumes": [credentials, *copy.deepcopy(settings.volumes)],
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        spec["nodeSelector"] = {str(k): str(v) for k, v in settings.node_selector.items()}
    if settings.tolerations:
        spec["tolerations"] = copy.deepcopy(settings.tolerations)
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return spec


# -- the objects ---------------------------------------------------------------------------------
def scheduler_pod(
    settings: ManifestSettings, cluster: Cluster, *, api_url: str, heartbeat_period: float
) -> dict[str, Any]:
    """The scheduler Pod: TLS files and API token read from the mounted Secret."""
    cmd = scheduler_command(cluster, host="0.0.0.0", heartbeat_period=heartbeat_period)
    for flag, port in (
        ("--port", settings.scheduler_port),
        ("--dashboard-address", settings.dashboard_port),
        ("--dg-api-address", settings.api_port),
    ):
        i = cmd.index(flag) + 1
        cmd[i] = str(port) if flag == "--port" else f"0.0.0.0:{port}"
    env = scheduler_env(
        cluster,
        api_url=api_url,
        cert_path=_credentials_path(settings, CERT_FILE),
        key_path=_credentials_path(settings, KEY_FILE),
    )
    env.update({str(k): str(v) for k, v in settings.environment.items()})
    # dask-gateway's scheduler preload reads the token from this file (a value with "/").
    env["DASK_GATEWAY_API_TOKEN"] = _credentials_path(settings, TOKEN_FILE)
    config = cluster.config
    resources = _resources(settings, config.scheduler_cores, config.scheduler_memory)
    container = _container(settings, SCHEDULER, cmd, env, resources, config.get("image", ""))
    ports = [
        {"name": name, "containerPort": port}
        for name, port in (
            ("tcp-comm", settings.scheduler_port),
            ("http-dashboard", settings.dashboard_port),
            ("http-api", settings.api_port),
        )
        if port
    ]
    if ports:
        container["ports"] = ports
    container = merge(container, settings.scheduler_extra_container_config)
    volume = _credentials_volume(settings, cluster.name, [CERT_FILE, KEY_FILE, TOKEN_FILE])
    spec = merge(_pod_spec(settings, container, volume), settings.scheduler_extra_pod_config)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(settings, cluster, scheduler_pod_name(cluster.name), SCHEDULER),
        "spec": spec,
    }


def worker_pod(
    settings: ManifestSettings, cluster: Cluster, worker_name: str, owner_uid: str
) -> dict[str, Any]:
    """A worker Pod: TLS files (no token) from the cluster's Secret, owned by the scheduler."""
    cmd = worker_command(
        cluster,
        worker_name,
        cluster.scheduler_address,
        host="0.0.0.0",
        dashboard=settings.worker_dashboard,
    )
    if not settings.nanny:
        cmd.append("--no-nanny")
    cmd += list(settings.worker_extra_args)
    env = worker_env(
        cluster,
        cert_path=_credentials_path(settings, CERT_FILE),
        key_path=_credentials_path(settings, KEY_FILE),
    )
    if settings.nanny:
        # "fork": the nanny forks its worker instead of a new interpreter importing it all.
        method = settings.nanny_start_method
        env.setdefault("DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD", method)
    env.update({str(k): str(v) for k, v in settings.environment.items()})
    config = cluster.config
    resources = _resources(
        settings, config.worker_cores, config.worker_memory, config.get("worker_gpus", 0)
    )
    container = merge(
        _container(settings, WORKER, cmd, env, resources, config.get("image", "")),
        settings.worker_extra_container_config,
    )
    volume = _credentials_volume(settings, cluster.name, [CERT_FILE, KEY_FILE])
    spec = merge(_pod_spec(settings, container, volume), settings.worker_extra_pod_config)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(
            settings,
            cluster,
            worker_pod_name(worker_name),
            WORKER,
            worker_name,
            owner_reference(cluster.name, owner_uid),
        ),
        "spec": spec,
    }


def credentials_secret(
    settings: ManifestSettings, cluster: Cluster, owner_uid: str
) -> dict[str, Any]:
    """The cluster's TLS certificate, key and API token."""

    def b64(data: bytes | str) -> str:
        raw = data.encode() if isinstance(data, str) else data
        return base64.b64encode(raw).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(
            settings,
            cluster,
            secret_name(cluster.name),
            "credentials",
            owner=owner_reference(cluster.name, owner_uid),
        ),
        "data": {
            CERT_FILE: b64(cluster.tls_cert),
            KEY_FILE: b64(cluster.tls_key),
            TOKEN_FILE: b64(cluster.token),
        },
    }


def scheduler_service(
    settings: ManifestSettings, cluster: Cluster, owner_uid: str
) -> dict[str, Any]:
    """A stable name for the scheduler: ``dask-<cluster>.<namespace>.svc``."""
    selector = {
        INSTANCE_LABEL: settings.gateway_id,
        CLUSTER_LABEL: cluster.name,
        COMPONENT_LABEL: SCHEDULER,
    }
    ports = [
        {
            "name": name,
            "port": default_port,
            "targetPort": port or default_port,
            "protocol": "TCP",
        }
        for name, default_port, port in (
            ("tcp-comm", 8786, settings.scheduler_port),
            ("http-dashboard", 8787, settings.dashboard_port),
            ("http-api", 8788, settings.api_port),
        )
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            settings,
            cluster,
            service_name(cluster.name),
            "scheduler-service",
            owner=owner_reference(cluster.name, owner_uid),
        ),
        "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
    }
