"""Schedulers and workers as Kubernetes pods, through kubernetes-asyncio.

Per cluster: a scheduler Pod, a Service in front of it and a Secret holding the
cluster's TLS certificate, key and API token, mounted as files (never plain
environment values). The Service, the Secret and every worker Pod carry an
owner reference to the scheduler Pod, so deleting it garbage-collects the
whole cluster even if the gateway is gone; the launcher still deletes
explicitly on stop.

Status comes from one label-selected list+watch of this gateway's pods
(resumed from its resourceVersion, re-listed on 410 Gone, backed off on
errors) feeding a cache; status checks read the cache and never call the API
per cluster. API calls retry 5xx answers and time-outs with back-off and then
raise ``LauncherUnavailable`` (the backend retries without counting worker
failures); a 403 becomes a message naming the missing permission.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from dask_gateway_server.backends.kubernetes.utils import merge_json_objects as merge
from traitlets import (
    Bool,
    Dict,
    Enum,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    validate,
)

from ..commands import (
    CERT_FILE,
    KEY_FILE,
    scheduler_command,
    scheduler_env,
    worker_command,
    worker_env,
)
from .base import Launcher, LauncherUnavailable, WorkerCheck, WorkerPhase

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

# Every permission the launcher uses, in the namespace it runs pods in. deploy/rbac.yaml
# grants exactly these (a unit test compares them).
REQUIRED_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "pods": ("create", "delete", "deletecollection", "list", "watch"),
    # Owner references with blockOwnerDeletion need this where the
    # OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, the tests).
    "pods/finalizers": ("update",),
    "services": ("create", "delete"),
    "secrets": ("create", "delete"),
}

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Waiting reasons that never resolve by themselves: the worker failed.
PERMANENT_WAITING = frozenset(
    {
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
MAX_REASON = 400
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubernetesAPIError(Exception):
    """The API server answered with an error that retrying will not fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KubernetesForbidden(KubernetesAPIError):
    """403: the gateway's service account lacks a permission (see deploy/rbac.yaml)."""


class WatchExpired(Exception):
    """410 Gone: the watch's resourceVersion is too old; the cache must be re-listed."""


# -- small helpers (pure, unit-tested) ------------------------------------------------------
def cpu_quantity(cores: float) -> str:
    """A Kubernetes CPU quantity: whole cores as integers, fractions in millicores."""
    if float(cores).is_integer():
        return str(int(cores))
    return f"{round(float(cores) * 1000)}m"


def resource_version_int(rv: Any) -> int | None:
    """resourceVersions are opaque strings; every real API server uses etcd revisions."""
    try:
        return int(rv)
    except (TypeError, ValueError):
        return None


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def unschedulable_reason(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message when it cannot place the pod, else None."""
    cond = _condition(pod, "PodScheduled")
    if cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
        return _short(f"unschedulable: {cond.get('message') or 'no node fits the pod'}")
    return None


def termination_reason(pod: Mapping[str, Any]) -> str:
    """Why a pod ended: the container's termination reason, exit code and message."""
    status = pod.get("status") or {}
    parts = []
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
            "terminated"
        )
        if term:
            text = f"container {cs.get('name')} {term.get('reason') or 'terminated'}"
            text += f" (exit code {term.get('exitCode')})"
            if term.get("message"):
                text += f": {term['message'].strip()}"
            parts.append(text)
    if status.get("reason") or status.get("message"):
        parts.append(f"{status.get('reason', '')} {status.get('message', '')}".strip())
    return _short(f"pod {status.get('phase', 'ended').lower()}: " + ("; ".join(parts) or "?"))


def check_pod(pod: Mapping[str, Any]) -> WorkerCheck:
    """What a worker pod's status means for the gateway."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase in ("Succeeded", "Failed"):
        return WorkerCheck(WorkerPhase.FAILED, termination_reason(pod))
    if meta.get("deletionTimestamp"):
        return WorkerCheck(WorkerPhase.FAILED, "the pod is being deleted")
    waiting = []
    for cs in status.get("containerStatuses") or []:
        w = (cs.get("state") or {}).get("waiting")
        if w:
            if w.get("reason") in PERMANENT_WAITING:
                why = f"container {cs.get('name')}: {w.get('reason')}: {w.get('message', '')}"
                return WorkerCheck(WorkerPhase.FAILED, _short(why))
            waiting.append(f"{w.get('reason', 'waiting')}: {w.get('message', '')}".rstrip(": "))
    if phase == "Running":
        ready = _condition(pod, "Ready")
        if ready and ready.get("status") == "True":
            return WorkerCheck(WorkerPhase.RUNNING)
        return WorkerCheck(
            WorkerPhase.PENDING, _short("running, not ready yet " + "; ".join(waiting))
        )
    if phase == "Unknown":
        return WorkerCheck(WorkerPhase.PENDING, "pod status unknown (its node is unreachable)")
    unschedulable = unschedulable_reason(pod)
    if unschedulable:
        return WorkerCheck(WorkerPhase.PENDING, unschedulable)
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return WorkerCheck(WorkerPhase.PENDING, "waiting for the Kubernetes scheduler")
    return WorkerCheck(
        WorkerPhase.PENDING,
        _short(f"starting on node {node}" + (f" ({'; '.join(waiting)})" if waiting else "")),
    )


def pod_alive(pod: Mapping[str, Any]) -> bool:
    """A scheduler pod that is pending or running and not being deleted."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def api_error_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, else the body itself."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    try:
        return str(json.loads(body).get("message") or body)
    except (TypeError, ValueError, AttributeError):
        return str(body or "")


def forbidden_message(verb: str, resource: str, namespace: str, detail: str) -> str:
    """An admin-facing 403 explanation naming the missing permission."""
    return (
        f"Kubernetes refused the gateway permission to {verb} {resource} in namespace "
        f"{namespace!r} (403: {_short(detail)}). Grant the gateway's service account "
        f'"{verb}" on "{resource}" in that namespace: deploy/rbac.yaml is the Role with '
        "every permission the Kubernetes launcher needs."
    )


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PodCache:
    """Pods of one label selector, kept current by one list+watch.

    ``open_watch(resource_version)`` returns an async iterator of watch events
    (dicts with ``type`` and ``object``); ``list_pods()`` returns a PodList
    dict. The loop resumes the watch from the last resourceVersion when the
    stream ends or breaks, re-lists on 410 Gone, and backs off on errors.
    Readers use ``pods``, ``connected`` (is the cache current?) and
    ``has_seen`` (would a pod created at that point be in the cache?).
    """

    def __init__(
        self,
        list_pods: Callable[[], Awaitable[dict]],
        open_watch: Callable[[str], Awaitable[AsyncIterator[dict]]],
        log: Any,
        *,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        on_sync: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.list_pods = list_pods
        self.open_watch = open_watch
        self.log = log
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.on_sync = on_sync
        self.pods: dict[str, dict] = {}
        self.resource_version = ""
        self.listed_at = 0.0  # wall time at which the last successful list was requested
        self.synced = asyncio.Event()
        self.connected = False
        self.error = ""
        self.lists = 0  # successful lists (the first one and every re-list)

    def apply(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event to the cache."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise WatchExpired(obj.get("message", "resourceVersion too old"))
            raise KubernetesAPIError(int(code or 500), obj.get("message") or str(obj))
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self.pods[meta["name"]] = obj
        elif kind == "DELETED":
            self.pods.pop(meta.get("name"), None)
        if rv:
            self.resource_version = rv

    def has_seen(self, created_rv: Any, created_at: float) -> bool:
        """Whether the cache reflects the API past a pod created at (``created_rv``, time).

        True means: a pod created then that is missing from the cache was deleted.
        """
        if not self.connected:
            return False
        ours, cache = resource_version_int(created_rv), resource_version_int(self.resource_version)
        if ours is not None and cache is not None and cache >= ours:
            return True
        return bool(created_at) and self.listed_at > created_at

    async def relist(self) -> None:
        started = time.time()
        body = await self.list_pods()
        self.pods = {p["metadata"]["name"]: p for p in body.get("items") or []}
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion", "")
        self.listed_at = started
        self.lists += 1
        self.connected = True
        self.error = ""
        self.synced.set()
        if self.on_sync is not None:
            try:
                await self.on_sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("Reconciling after a pod list failed", exc_info=True)

    async def run(self) -> None:
        delay = self.backoff_min
        while True:
            try:
                if not self.resource_version:
                    await self.relist()
                    self.log.info(
                        "Pod cache listed %d pods at resourceVersion %s",
                        len(self.pods),
                        self.resource_version,
                    )
                stream = await self.open_watch(self.resource_version)
                if not self.connected or self.error:
                    self.log.info(
                        "Pod watch resumed from resourceVersion %s", self.resource_version
                    )
                self.connected, self.error = True, ""
                delay = self.backoff_min
                async for event in stream:
                    self.apply(event)
                # The server ended the stream (its time-out): resume from the same version.
            except asyncio.CancelledError:
                raise
            except WatchExpired as exc:
                self.log.warning(
                    "Pod watch: resourceVersion %s is gone (410: %s); re-listing",
                    self.resource_version,
                    exc,
                )
                self.connected = False  # events were missed: stale until the re-list
                self.resource_version = ""
            except Exception as exc:
                self.connected = False
                self.error = describe_error(exc)
                if isinstance(exc, KubernetesForbidden):
                    self.log.error("Pod watch failed: %s", exc)
                else:
                    self.log.warning("Pod watch failed (%s); retrying in %.1fs", self.error, delay)
                await asyncio.sleep(delay * (1 + 0.2 * random.random()))
                delay = min(delay * 2, self.backoff_max)


class KubernetesLauncher(Launcher):
    """Schedulers and workers as Kubernetes pods (``kubernetes-asyncio``).

    The scheduler pod, its Service and its Secret (TLS certificate, key and API
    token, mounted as files) are created per cluster; worker pods mount the same
    Secret (without the token). Everything is owned by the scheduler pod, so the
    garbage collector removes a cluster whose scheduler pod is deleted. Status
    comes from one watch of this gateway's pods.
    """

    kind = "kubernetes"

    # -- connection -------------------------------------------------------------------------
    kubeconfig = Unicode(
        "",
        help="""
        Path of the kubeconfig the gateway uses. Empty: ``$KUBECONFIG`` if set,
        else the in-cluster service account when the gateway runs in a pod,
        else ``~/.kube/config``.
        """,
        config=True,
    )

    context = Unicode(
        "", help="kubeconfig context to use. Empty: its current context.", config=True
    )

    namespace = Unicode(
        "",
        help="""
        Namespace of every pod, service and secret. Empty: the gateway pod's own
        namespace in-cluster, else the kubeconfig context's namespace, else
        ``default``.
        """,
        config=True,
    )

    gateway_id = Unicode(
        "elastic-gateway",
        help="""
        Value of the ``gateway.dask.org/instance`` label on everything this
        gateway creates; its watch and clean-ups select by it. Gateways sharing
        a namespace must use different values. It must stay the same across
        restarts (a restarted gateway finds its pods by it), so the default is a
        fixed name, not the host or pod name. A valid label value (63
        characters at most).
        """,
        config=True,
    )

    @validate("gateway_id")
    def _validate_gateway_id(self, proposal):
        value = proposal.value
        if not value or len(value) > 63 or not LABEL_VALUE.match(value):
            raise TraitError(
                f"KubernetesLauncher.gateway_id={value!r} is not a valid label value: "
                "use at most 63 letters, digits, '-', '_' or '.', starting and ending "
                "with a letter or digit"
            )
        return value

    request_timeout = Float(
        15.0, min=1, help="Seconds before one Kubernetes API request counts as failed.", config=True
    )

    api_retry_timeout = Float(
        20.0,
        min=0,
        help="""
        Seconds an API call is retried (with back-off) on 5xx answers, time-outs
        and connection errors before the launcher reports the API unavailable
        (the gateway then retries later without failing anything).
        """,
        config=True,
    )

    watch_timeout = Float(
        300.0,
        min=1,
        help="""
        Seconds after which the API server ends the pod watch; it is resumed
        from its resourceVersion at once (a re-list only follows a 410 Gone).
        """,
        config=True,
    )

    watch_backoff_max = Float(
        30.0, min=0.1, help="Longest pause between attempts to re-open a failed watch.", config=True
    )

    reconcile_period = Float(
        30.0,
        min=0.5,
        help="""
        Seconds between comparisons of the pod cache with the database: pods
        without an active record (a deletion that failed while the API was
        down, a crash between create and record) are deleted. Reads the cache
        only; no API call unless something must be deleted.
        """,
        config=True,
    )

    startup_sync_timeout = Float(
        20.0,
        min=0,
        help="Seconds a starting gateway waits for its first pod list before reconciling.",
        config=True,
    )

    # -- pods ----------------------------------------------------------------------------------
    image = Unicode(
        "ghcr.io/dask/dask-gateway:2026.3.0",
        help="""
        Container image of schedulers and workers. It must provide ``dask``
        (distributed) and ``dask-gateway`` of the versions the gateway runs.
        """,
        config=True,
    )

    image_pull_policy = Enum(
        ["Always", "IfNotPresent", "Never"],
        "IfNotPresent",
        help="``imagePullPolicy`` of the containers.",
        config=True,
    )

    image_pull_secrets = List(
        Unicode(),
        [],
        help="Names of Secrets to pull the image with (``imagePullSecrets``).",
        config=True,
    )

    service_account = Unicode(
        "",
        help="""
        ``serviceAccountName`` of scheduler and worker pods. Empty: the
        namespace's ``default``. Their token is not mounted
        (``automount_service_account_token``).
        """,
        config=True,
    )

    automount_service_account_token = Bool(
        False,
        help="Mount the pods' service-account token. Dask does not need the Kubernetes API.",
        config=True,
    )

    node_selector = Dict({}, help="``nodeSelector`` of scheduler and worker pods.", config=True)

    tolerations = List(
        Dict(),
        [],
        help="``tolerations`` of scheduler and worker pods (list of Toleration dicts).",
        config=True,
    )

    volumes = List(
        Dict(),
        [],
        help="""
        Extra ``volumes`` of scheduler and worker pods, e.g. CVMFS or home areas:
        ``[{"name": "cvmfs", "hostPath": {"path": "/cvmfs"}}]``. Mount them with
        ``volume_mounts``.
        """,
        config=True,
    )

    volume_mounts = List(
        Dict(),
        [],
        help="""
        Extra ``volumeMounts`` of the scheduler and worker containers:
        ``[{"name": "cvmfs", "mountPath": "/cvmfs", "readOnly": True}]``.
        """,
        config=True,
    )

    extra_labels = Dict(
        {},
        help="Extra labels on every pod, service and secret (the launcher's own labels win).",
        config=True,
    )

    extra_annotations = Dict(
        {}, help="Extra annotations on every pod, service and secret.", config=True
    )

    environment = Dict(
        {},
        help="Extra, non-secret environment variables of scheduler and worker containers.",
        config=True,
    )

    scheduler_extra_pod_config = Dict(
        {},
        help="""
        Merged into the scheduler pod's ``spec`` (dicts merge, lists append), for
        anything without a setting of its own (``priorityClassName``,
        ``affinity``, ``securityContext``...).
        """,
        config=True,
    )

    worker_extra_pod_config = Dict(
        {}, help="Merged into worker pods' ``spec`` (dicts merge, lists append).", config=True
    )

    scheduler_extra_container_config = Dict(
        {}, help="Merged into the scheduler container (dicts merge, lists append).", config=True
    )

    worker_extra_container_config = Dict(
        {}, help="Merged into worker containers (dicts merge, lists append).", config=True
    )

    cpu_limits = Bool(
        True,
        help="""
        Set CPU limits equal to the requested cores (Guaranteed QoS when memory
        matches too). Off: only CPU requests, so pods may use idle cores.
        """,
        config=True,
    )

    gpu_resource = Unicode(
        "nvidia.com/gpu",
        help="Extended resource that a cluster's ``worker_gpus`` requests.",
        config=True,
    )

    credentials_mount_path = Unicode(
        "/etc/dask-credentials",
        help="Where the cluster's Secret (TLS files; the API token for the scheduler) is mounted.",
        config=True,
    )

    credentials_file_mode = Integer(
        0o644,
        help="""
        File mode of the mounted credentials. Kubernetes' default (0644) works for
        any container user; 0o400 is stricter but needs the container to run as
        root or with a matching ``fsGroup``.
        """,
        config=True,
    )

    termination_grace_period = Integer(
        30,
        min=0,
        help="``terminationGracePeriodSeconds`` of scheduler and worker pods.",
        config=True,
    )

    scheduler_port = Integer(
        8786,
        min=0,
        max=65535,
        help="""
        Port the scheduler listens on (TLS) and its Service exposes. 0: any free
        port (only for pods that share one network, like the tests' process
        kubelet); the Service then maps to the default ports, which lead nowhere.
        """,
        config=True,
    )

    dashboard_port = Integer(8787, min=0, max=65535, help="Scheduler dashboard port.", config=True)

    api_port = Integer(
        8788, min=0, max=65535, help="Port of the scheduler's dask-gateway API.", config=True
    )

    nanny = Bool(True, help="Run a Nanny in worker pods.", config=True)

    worker_extra_args = List(Unicode(), [], help="Extra arguments of ``dask worker``.", config=True)

    # -- lifecycle ------------------------------------------------------------------------------
    async def setup(self, backend) -> None:
        await super().setup(backend)
        if getattr(backend, "scheduler_launcher_instance", self) is not self:
            from ..pools import ConfigError

            raise ConfigError(
                "a Kubernetes worker pool needs the scheduler in Kubernetes too: set "
                'c.ElasticBackend.scheduler_launcher = "kubernetes" (worker pods mount the '
                "Secret created with the scheduler pod and are owned by it)"
            )
        from kubernetes_asyncio import client

        configuration = client.Configuration()
        self.namespace = await self._load_kube_config(configuration)
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self._selector = f"{MANAGED_BY_LABEL}={MANAGER},{INSTANCE_LABEL}={self.gateway_id}"
        self._reconcile_enabled = False
        self._deleting: set[str] = set()
        self._reported_unschedulable: set[str] = set()
        self.cache = PodCache(
            self._list_pods,
            self._open_watch,
            self.log,
            backoff_max=self.watch_backoff_max,
            on_sync=self._reconcile,
        )
        self._tasks = [
            asyncio.ensure_future(self.cache.run()),
            asyncio.ensure_future(self._reconcile_loop()),
        ]
        self.log.info(
            "Kubernetes launcher: namespace %s, server %s, instance label %s",
            self.namespace,
            configuration.host,
            self.gateway_id,
        )

    async def _load_kube_config(self, configuration) -> str:
        """Fill ``configuration`` from the kubeconfig or the service account; the namespace."""
        from kubernetes_asyncio import config

        namespace = self.namespace
        path = self.kubeconfig or os.environ.get("KUBECONFIG", "")
        in_cluster = not path and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        where = (
            "in-cluster service account" if in_cluster else f"kubeconfig {path or '~/.kube/config'}"
        )
        try:
            if in_cluster:
                config.load_incluster_config(client_configuration=configuration)
                if not namespace and os.path.exists(IN_CLUSTER_NAMESPACE):
                    namespace = (await asyncio.to_thread(_read, IN_CLUSTER_NAMESPACE)).strip()
            else:
                loader = await config.load_kube_config(
                    config_file=path or None,
                    context=self.context or None,
                    client_configuration=configuration,
                    persist_config=False,
                )
                if not namespace:
                    ctx = (loader.current_context or {}).get("context") or {}
                    namespace = ctx.get("namespace")
        except Exception as exc:
            from ..pools import ConfigError

            raise ConfigError(
                f"KubernetesLauncher cannot load its Kubernetes configuration "
                f"({where}): {exc}; set KubernetesLauncher.kubeconfig (and context) "
                "to a working kubeconfig"
            ) from exc
        return namespace or "default"

    async def cleanup(self) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        await asyncio.gather(*getattr(self, "_tasks", []), return_exceptions=True)
        api = getattr(self, "api_client", None)
        if api is not None:
            await api.close()

    # -- API access ---------------------------------------------------------------------------
    async def _call(
        self,
        verb: str,
        resource: str,
        method: Callable[..., Awaitable[Any]],
        *args: Any,
        retry_for: float | None = None,
        **kwargs: Any,
    ) -> dict:
        """One API call returning the JSON body; retried on 5xx/time-outs with back-off.

        Raises ``LauncherUnavailable`` once ``retry_for`` (default
        ``api_retry_timeout``) seconds are spent, ``KubernetesForbidden`` on 403
        and ``KubernetesAPIError`` on other errors (404, 409, 422...).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.api_retry_timeout if retry_for is None else retry_for)
        delay = 0.25
        while True:
            try:
                resp = await method(
                    *args, _preload_content=False, _request_timeout=self.request_timeout, **kwargs
                )
                try:
                    body = await resp.read()
                finally:
                    resp.release()
                if 200 <= resp.status < 300:
                    return json.loads(body) if body else {}
                detail = api_error_message(body)
                if resp.status == 403:
                    raise KubernetesForbidden(
                        403, forbidden_message(verb, resource, self.namespace, detail)
                    )
                if resp.status not in RETRYABLE_STATUS:
                    raise KubernetesAPIError(
                        resp.status,
                        f"Kubernetes API: {verb} {resource} in namespace {self.namespace!r} "
                        f"failed with {resp.status}: {_short(detail)}",
                    )
                last = f"{resp.status} {_short(detail)}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                last = describe_error(exc)
            if loop.time() + delay > deadline:
                raise LauncherUnavailable(
                    f"Kubernetes API unavailable: {verb} {resource} in namespace "
                    f"{self.namespace!r} failed ({last})"
                )
            self.log.info(
                "Kubernetes %s %s failed (%s); retrying in %.2fs", verb, resource, last, delay
            )
            await asyncio.sleep(delay * (1 + 0.2 * random.random()))
            delay = min(delay * 2, 5.0)

    async def _list_pods(self) -> dict:
        return await self._call(
            "list",
            "pods",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=self._selector,
            retry_for=0,
        )

    async def _open_watch(self, resource_version: str) -> AsyncIterator[dict]:
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.request_timeout,
            sock_read=self.watch_timeout + self.request_timeout,
        )
        resp = await self.core.list_namespaced_pod(
            self.namespace,
            label_selector=self._selector,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            # Spread re-opens of many gateways; the server ends the stream before sock_read.
            timeout_seconds=max(1, int(self.watch_timeout * (0.9 + 0.1 * random.random()))),
            _preload_content=False,
            _request_timeout=timeout,
        )
        if resp.status != 200:
            try:
                detail = api_error_message(await resp.read())
            finally:
                resp.release()
            if resp.status == 410:
                raise WatchExpired(detail)
            if resp.status == 403:
                raise KubernetesForbidden(
                    403, forbidden_message("watch", "pods", self.namespace, detail)
                )
            raise KubernetesAPIError(resp.status, f"watch pods failed with {resp.status}: {detail}")
        return self._events(resp)

    @staticmethod
    async def _events(resp) -> AsyncIterator[dict]:
        try:
            async for line in resp.content:
                line = line.strip()
                if line:
                    yield json.loads(line)
        finally:
            resp.release()

    async def _delete(self, resource: str, name: str, **kwargs: Any) -> bool:
        """Delete one object; False if it was already gone."""
        method = {
            "pods": self.core.delete_namespaced_pod,
            "services": self.core.delete_namespaced_service,
            "secrets": self.core.delete_namespaced_secret,
        }[resource]
        try:
            await self._call("delete", resource, method, name, self.namespace, **kwargs)
        except KubernetesAPIError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _gather(self, coros: Sequence[Awaitable[Any]]) -> list[Any]:
        """Run API calls concurrently; re-raise the first failure after all finished."""
        results = await asyncio.gather(*coros, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    # -- manifests ------------------------------------------------------------------------------
    def scheduler_pod_name(self, cluster) -> str:
        return f"dask-scheduler-{cluster.name}"

    def worker_pod_name(self, worker_name: str) -> str:
        return f"dask-worker-{worker_name}"

    def service_name(self, cluster) -> str:
        return f"dask-{cluster.name}"

    def secret_name(self, cluster) -> str:
        return f"dask-credentials-{cluster.name}"

    def labels(self, cluster, component: str, worker_name: str | None = None) -> dict[str, str]:
        labels = {str(k): str(v) for k, v in self.extra_labels.items()}
        labels.update(
            {
                MANAGED_BY_LABEL: MANAGER,
                INSTANCE_LABEL: self.gateway_id,
                CLUSTER_LABEL: cluster.name,
                COMPONENT_LABEL: component,
            }
        )
        if worker_name is not None:
            labels[WORKER_LABEL] = worker_name
        return labels

    def metadata(
        self, cluster, name: str, component: str, worker_name: str | None = None, owner=None
    ) -> dict[str, Any]:
        annotations = {str(k): str(v) for k, v in self.extra_annotations.items()}
        annotations[USER_ANNOTATION] = cluster.username
        meta = {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(cluster, component, worker_name),
            "annotations": annotations,
        }
        if owner is not None:
            meta["ownerReferences"] = [owner]
        return meta

    def owner_reference(self, cluster, uid: str | None = None) -> dict[str, Any]:
        """The scheduler pod as owner: deleting it garbage-collects the cluster."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": self.scheduler_pod_name(cluster),
            "uid": uid or cluster.state["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def _path(self, filename: str) -> str:
        return f"{self.credentials_mount_path.rstrip('/')}/{filename}"

    def _credentials_volume(self, cluster, files: Sequence[str]) -> dict[str, Any]:
        return {
            "name": "dask-credentials",
            "secret": {
                "secretName": self.secret_name(cluster),
                "defaultMode": self.credentials_file_mode,
                "items": [{"key": f, "path": f} for f in files],
            },
        }

    def _resources(self, cores: float, memory: int, gpus: int = 0) -> dict[str, Any]:
        requests = {"cpu": cpu_quantity(cores), "memory": str(int(memory))}
        limits = {"memory": str(int(memory))}
        if self.cpu_limits:
            limits["cpu"] = requests["cpu"]
        if gpus:
            requests[self.gpu_resource] = limits[self.gpu_resource] = str(int(gpus))
        return {"requests": requests, "limits": limits}

    def _container(
        self, name: str, command: list[str], env: Mapping[str, str], resources: dict
    ) -> dict[str, Any]:
        return {
            "name": name,
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "command": command,
            "env": [{"name": k, "value": str(v)} for k, v in env.items()],
            "resources": resources,
            "volumeMounts": [
                {
                    "name": "dask-credentials",
                    "mountPath": self.credentials_mount_path,
                    "readOnly": True,
                },
                *copy.deepcopy(self.volume_mounts),
            ],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }

    def _pod_spec(self, container: dict, credentials: dict) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": self.automount_service_account_token,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": self.termination_grace_period,
            "containers": [container],
            "volumes": [credentials, *copy.deepcopy(self.volumes)],
        }
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        if self.node_selector:
            spec["nodeSelector"] = {str(k): str(v) for k, v in self.node_selector.items()}
        if self.tolerations:
            spec["tolerations"] = copy.deepcopy(self.tolerations)
        if self.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": n} for n in self.image_pull_secrets]
        return spec

    def scheduler_pod(self, cluster) -> dict[str, Any]:
        """The scheduler Pod: TLS files and API token read from the mounted Secret."""
        cmd = scheduler_command(
            cluster, host="0.0.0.0", heartbeat_period=self.backend.cluster_heartbeat_period
        )
        for flag, port in (
            ("--port", self.scheduler_port),
            ("--dashboard-address", self.dashboard_port),
            ("--dg-api-address", self.api_port),
        ):
            i = cmd.index(flag) + 1
            cmd[i] = str(port) if flag == "--port" else f"0.0.0.0:{port}"
        env = scheduler_env(
            cluster,
            api_url=self.backend.api_url,
            cert_path=self._path(CERT_FILE),
            key_path=self._path(KEY_FILE),
        )
        env.update({str(k): str(v) for k, v in self.environment.items()})
        # dask-gateway's scheduler preload reads the token from this file (a value with "/").
        env["DASK_GATEWAY_API_TOKEN"] = self._path(TOKEN_FILE)
        config = cluster.config
        container = self._container(
            SCHEDULER, cmd, env, self._resources(config.scheduler_cores, config.scheduler_memory)
        )
        ports = [
            {"name": name, "containerPort": port}
            for name, port in (
                ("tcp-comm", self.scheduler_port),
                ("http-dashboard", self.dashboard_port),
                ("http-api", self.api_port),
            )
            if port
        ]
        if ports:
            container["ports"] = ports
        container = merge(container, self.scheduler_extra_container_config)
        volume = self._credentials_volume(cluster, [CERT_FILE, KEY_FILE, TOKEN_FILE])
        spec = merge(self._pod_spec(container, volume), self.scheduler_extra_pod_config)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.metadata(cluster, self.scheduler_pod_name(cluster), SCHEDULER),
            "spec": spec,
        }

    def worker_pod(self, cluster, worker_name: str) -> dict[str, Any]:
        """A worker Pod: TLS files (no token) from the cluster's Secret, owned by the scheduler."""
        cmd = worker_command(cluster, worker_name, cluster.scheduler_address, host="0.0.0.0")
        if not self.nanny:
            cmd.append("--no-nanny")
        cmd += list(self.worker_extra_args)
        env = worker_env(cluster, cert_path=self._path(CERT_FILE), key_path=self._path(KEY_FILE))
        env.update({str(k): str(v) for k, v in self.environment.items()})
        config = cluster.config
        resources = self._resources(
            config.worker_cores, config.worker_memory, config.get("worker_gpus", 0)
        )
        container = merge(
            self._container(WORKER, cmd, env, resources), self.worker_extra_container_config
        )
        volume = self._credentials_volume(cluster, [CERT_FILE, KEY_FILE])
        spec = merge(self._pod_spec(container, volume), self.worker_extra_pod_config)
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.metadata(
                cluster,
                self.worker_pod_name(worker_name),
                WORKER,
                worker_name,
                self.owner_reference(cluster),
            ),
            "spec": spec,
        }

    def credentials_secret(self, cluster, owner_uid: str | None = None) -> dict[str, Any]:
        """The cluster's TLS certificate, key and API token."""

        def b64(data: bytes | str) -> str:
            raw = data.encode() if isinstance(data, str) else data
            return base64.b64encode(raw).decode()

        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": self.metadata(
                cluster,
                self.secret_name(cluster),
                "credentials",
                owner=self.owner_reference(cluster, owner_uid),
            ),
            "data": {
                CERT_FILE: b64(cluster.tls_cert),
                KEY_FILE: b64(cluster.tls_key),
                TOKEN_FILE: b64(cluster.token),
            },
        }

    def scheduler_service(self, cluster, owner_uid: str | None = None) -> dict[str, Any]:
        """A stable name for the scheduler: ``dask-<cluster>.<namespace>.svc``."""
        selector = {
            INSTANCE_LABEL: self.gateway_id,
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
                ("tcp-comm", 8786, self.scheduler_port),
                ("http-dashboard", 8787, self.dashboard_port),
                ("http-api", 8788, self.api_port),
            )
        ]
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(
                cluster,
                self.service_name(cluster),
                "scheduler-service",
                owner=self.owner_reference(cluster, owner_uid),
            ),
            "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
        }

    # -- schedulers -------------------------------------------------------------------------------
    async def _create_pod(self, manifest: dict) -> dict:
        """Create a pod; a 409 from a retried create that went through counts as created."""
        name = manifest["metadata"]["name"]
        try:
            return await self._call(
                "create", "pods", self.core.create_namespaced_pod, self.namespace, manifest
            )
        except KubernetesAPIError as exc:
            if exc.status != 409:
                raise
        # It exists: it is ours (names hold the cluster/worker uuid). Find it in the cache.
        deadline = time.monotonic() + self.request_timeout
        while time.monotonic() < deadline:
            pod = self.cache.pods.get(name)
            if pod is not None:
                return pod
            await asyncio.sleep(0.2)
        return {"metadata": {"name": name}}

    async def _create_owned(self, resource: str, manifest: dict) -> None:
        method = {
            "services": self.core.create_namespaced_service,
            "secrets": self.core.create_namespaced_secret,
        }[resource]
        try:
            await self._call("create", resource, method, self.namespace, manifest)
        except KubernetesAPIError as exc:
            if exc.status != 409:  # a retried create that went through
                raise

    async def start_scheduler(self, cluster) -> AsyncIterator[dict[str, Any]]:
        name = self.scheduler_pod_name(cluster)
        state: dict[str, Any] = {"pod": name, "created": time.time()}
        yield dict(state)  # recorded before the create: a crash now leaves a findable pod
        pod = await self._create_pod(self.scheduler_pod(cluster))
        meta = pod.get("metadata") or {}
        if not meta.get("uid"):
            stale = f" (pod watch: {self.cache.error})" if self.cache.error else ""
            raise RuntimeError(
                f"scheduler pod {name} already existed (a retried create went through) but the "
                f"pod watch did not show it within KubernetesLauncher.request_timeout"
                f"{stale}; start the cluster again"
            )
        # Taken after the create: a cache listed later has surely seen the pod.
        state.update(
            uid=meta["uid"], created=time.time(), created_rv=meta.get("resourceVersion", "")
        )
        yield dict(state)
        # Secret and Service are owned by the pod: create them after it. Its container
        # starts once the Secret exists (the kubelet retries the mount).
        await self._gather(
            [
                self._create_owned("secrets", self.credentials_secret(cluster, meta["uid"])),
                self._create_owned("services", self.scheduler_service(cluster, meta["uid"])),
            ]
        )

    async def stop_scheduler(self, cluster) -> None:
        self._reported_unschedulable.discard(cluster.name)
        # Deleting the pod garbage-collects the rest; delete it all explicitly anyway.
        await self._gather(
            [
                self._delete("pods", self.scheduler_pod_name(cluster)),
                self._delete("services", self.service_name(cluster)),
                self._delete("secrets", self.secret_name(cluster)),
            ]
        )

    async def check_schedulers(self, clusters) -> list[bool]:
        """From the pod cache: alive unless the pod ended, or vanished after the cache saw it."""
        out = []
        for cluster in clusters:
            name = cluster.state.get("pod")
            pod = self.cache.pods.get(name) if name else None
            if pod is None:
                gone = bool(name) and self.cache.has_seen(
                    cluster.state.get("created_rv"), cluster.state.get("created", 0)
                )
                out.append(not gone)
                continue
            out.append(pod_alive(pod))
            why = unschedulable_reason(pod)
            if why and cluster.name not in self._reported_unschedulable:
                self._reported_unschedulable.add(cluster.name)
                events = getattr(self.backend, "events", None)
                if events is not None:
                    events.add(cluster.name, f"scheduler pod {name} is {why}", "warning")
        return out

    # -- workers --------------------------------------------------------------------------
    async def start_workers(self, cluster, workers) -> list[dict[str, Any]]:
        """Create every pod of the batch concurrently; undo the batch if any create failed."""
        if "uid" not in cluster.state:
            raise RuntimeError(f"cluster {cluster.name} has no scheduler pod to own its workers")
        results = await asyncio.gather(
            *(self._create_pod(self.worker_pod(cluster, w.name)) for w in workers),
            return_exceptions=True,
        )
        created = time.time()  # after the creates: a cache listed later has seen the pods
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            made = [
                w.name
                for w, r in zip(workers, results, strict=True)
                if not isinstance(r, BaseException)
            ]
            if made:
                undone = await asyncio.gather(
                    *(self._delete("pods", self.worker_pod_name(n)) for n in made),
                    return_exceptions=True,
                )
                for n, r in zip(made, undone, strict=True):
                    if isinstance(r, BaseException):
                        # The periodic reconciliation deletes it as a pod without a record.
                        self.log.warning("Could not undo worker pod %s: %s", n, r)
            unavailable = [f for f in failures if isinstance(f, LauncherUnavailable)]
            raise (unavailable or failures)[0]
        return [
            {
                "pod": self.worker_pod_name(w.name),
                "created": created,
                "created_rv": (pod.get("metadata") or {}).get("resourceVersion", ""),
            }
            for w, pod in zip(workers, results, strict=True)
        ]

    async def stop_workers(self, workers) -> None:
        # Workers without a pod in their state never got one (their batch failed); a pod
        # that exists anyway (a create that timed out but went through) is a stray that the
        # periodic reconciliation deletes.
        names = [w.state["pod"] for w in workers if w.state.get("pod")]
        if names:
            await self._gather([self._delete("pods", n) for n in names])

    async def stop_cluster_workers(self, cluster, workers) -> None:
        """One deletecollection by label: also catches pods the database has no record of."""
        selector = f"{self._selector},{CLUSTER_LABEL}={cluster.name},{COMPONENT_LABEL}={WORKER}"
        await self._call(
            "deletecollection",
            "pods",
            self.core.delete_collection_namespaced_pod,
            self.namespace,
            label_selector=selector,
        )

    async def check_workers(self, workers) -> list[WorkerCheck]:
        """Answered from the pod cache: no API call per check."""
        out = []
        for w in workers:
            name = w.state.get("pod")
            pod = self.cache.pods.get(name) if name else None
            if pod is not None:
                out.append(check_pod(pod))
            elif not name:
                out.append(WorkerCheck(WorkerPhase.PENDING, "the pod is not created yet"))
            elif self.cache.has_seen(w.state.get("created_rv"), w.state.get("created", 0)):
                out.append(WorkerCheck(WorkerPhase.FAILED, f"pod {name} was deleted"))
            elif self.cache.error:
                why = f"Kubernetes API unreachable ({self.cache.error})"
                out.append(WorkerCheck(WorkerPhase.PENDING, why))
            else:
                out.append(WorkerCheck(WorkerPhase.PENDING, "waiting for the pod watch"))
        return out

    # -- reconciliation ----------------------------------------------------------------------------
    async def remove_unknown(self, known_clusters: set[str], known_workers: set[str]) -> int:
        """After a restart: delete pods of this gateway whose cluster or worker has no record."""
        try:
            await asyncio.wait_for(self.cache.synced.wait(), self.startup_sync_timeout)
        except TimeoutError:
            self.log.warning(
                "No pod list after %.0fs (%s); reconciling once the API answers",
                self.startup_sync_timeout,
                self.cache.error or "no answer",
            )
            self._reconcile_enabled = True
            return 0
        self._reconcile_enabled = True
        return await self._remove_strays(known_clusters, known_workers)

    def _known(self) -> tuple[set[str], set[str]]:
        """Clusters and workers not stopped yet: the backend may still be stopping them."""
        from dask_gateway_server.backends.db_base import JobStatus

        clusters = [
            c for c in self.backend.db.name_to_cluster.values() if c.status < JobStatus.STOPPED
        ]
        return (
            {c.name for c in clusters},
            {w.name for c in clusters for w in c.workers.values() if w.status < JobStatus.STOPPED},
        )

    async def _remove_strays(self, known_clusters: set[str], known_workers: set[str]) -> int:
        stray = []
        for name, pod in list(self.cache.pods.items()):
            meta = pod.get("metadata") or {}
            labels = meta.get("labels") or {}
            if meta.get("deletionTimestamp") or name in self._deleting:
                continue
            component = labels.get(COMPONENT_LABEL)
            if labels.get(CLUSTER_LABEL) not in known_clusters or (
                component == WORKER and labels.get(WORKER_LABEL) not in known_workers
            ):
                stray.append(name)
        if not stray:
            return 0
        self.log.warning("Deleting %d pods with no active record: %s", len(stray), stray)
        self._deleting.update(stray)
        try:
            results = await asyncio.gather(
                *(self._delete("pods", n) for n in stray), return_exceptions=True
            )
        finally:
            self._deleting.difference_update(stray)
        for name, result in zip(stray, results, strict=True):
            if isinstance(result, BaseException):
                self.log.warning("Deleting stray pod %s failed: %s", name, result)
        return sum(1 for r in results if not isinstance(r, BaseException))

    async def _reconcile(self) -> None:
        if self._reconcile_enabled and self.cache.connected:
            await self._remove_strays(*self._known())

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_period)
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("Reconciling pods with the database failed", exc_info=True)
