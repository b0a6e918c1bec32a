"""``KubernetesLauncher``: schedulers and workers as pods, and their lifecycle.

Starting and stopping schedulers and worker batches, status checks answered
from the pod cache (``watch.PodCache``, never an API call per cluster), and
the periodic deletion of pods without an active record. The settings are in
``settings``, the objects in ``manifests``, API calls and their retries in
``client``, the reading of pod status in ``status``.

Each pool that overrides settings has its own instance (its own API client,
watch and reconciliation); all of them delete only pods without a record of
the whole gateway, so they never delete each other's.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from dask_gateway_server.utils import TaskPool
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api

from ...config import ConfigError
from ...periodic import run_periodically
from ..base import (
    Check,
    ClusterFacts,
    KnownRecords,
    Launcher,
    LauncherContext,
    LauncherUnavailable,
    Phase,
)
from .client import KubernetesAPIError, load_kube_config, open_pod_watch, request_json
from .logs import read_pod_logs
from .manifests import (
    CLUSTER_LABEL,
    COMPONENT_LABEL,
    WORKER,
    WORKER_LABEL,
    cluster_workers_selector,
    credentials_secret,
    gateway_selector,
    scheduler_pod,
    scheduler_pod_name,
    scheduler_service,
    secret_name,
    service_name,
    worker_pod,
    worker_pod_name,
)
from .settings import KubernetesSettings
from .status import check_pod, check_scheduler_pod, unschedulable_reason
from .watch import PodCache

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker


LOG_BYTES = 1_000_000  # per pod and fetch; the gateway's store caps again


class KubernetesLauncher(KubernetesSettings, Launcher):
    """Schedulers and workers as Kubernetes pods (``kubernetes-asyncio``).

    The scheduler pod, its Service and its Secret (TLS certificate, key and API
    token, mounted as files) are created per cluster; worker pods mount the same
    Secret (without the token). Everything is owned by the scheduler pod, so the
    garbage collector removes a cluster whose scheduler pod is deleted. Status
    comes from one watch of this gateway's pods.
    """

    kind = "kubernetes"

    _configuration: Configuration | None = None  # from the kubeconfig, once loaded

    # -- lifecycle ------------------------------------------------------------------------------
    async def setup(self, context: LauncherContext) -> None:
        await super().setup(context)
        scheduler = context.scheduler_launcher
        if not isinstance(scheduler, KubernetesLauncher):
            raise ConfigError(
                "a Kubernetes worker pool needs the scheduler in Kubernetes too: set "
                'c.ElasticBackend.scheduler_launcher = "kubernetes" (worker pods mount the '
                "Secret created with the scheduler pod and are owned by it)"
            )
        configuration = await self._load_kube_config()
        if scheduler is not self:
            await self._check_same_place_as(scheduler)
        self.api_client = ApiClient(configuration)
        self.core = CoreV1Api(self.api_client)
        self._selector = gateway_selector(self.gateway_id)
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
        # The watch is a stream with its own resume and back-off, not a periodic step.
        self._tasks = TaskPool()
        self._tasks.spawn(self.cache.run())
        what = f"Reconciling pods ({context.name or self.kind}) with the database"
        run_periodically(self._tasks, self._reconcile, self.reconcile_period, self.log, what)
        self.log.info(
            "Kubernetes launcher %s: namespace %s, server %s, instance label %s",
            context.name or self.kind,
            self.namespace,
            configuration.host,
            self.gateway_id,
        )

    async def _load_kube_config(self) -> Configuration:
        """The API server's configuration, loaded once; resolves ``namespace`` too."""
        if self._configuration is None:
            configuration = Configuration()
            self.namespace = await load_kube_config(
                configuration,
                kubeconfig=self.kubeconfig,
                context=self.kubeconfig_context,
                namespace=self.namespace,
            )
            self._configuration = configuration
        return self._configuration

    async def _check_same_place_as(self, scheduler: KubernetesLauncher) -> None:
        """Refuse a pool whose pods could not be owned by the scheduler pods (same namespace)."""
        ours = (await self._load_kube_config()).host, self.namespace
        theirs = (await scheduler._load_kube_config()).host, scheduler.namespace
        if ours != theirs:
            pool = self.context.name
            raise ConfigError(
                f"ElasticBackend.worker_pools[{pool!r}] runs worker pods in namespace "
                f"{ours[1]!r} of {ours[0]}, but schedulers run in {theirs[1]!r} of "
                f"{theirs[0]}: worker pods are owned by their scheduler pod, which Kubernetes "
                f"allows only within one namespace. Set ElasticBackend.worker_pools[{pool!r}]"
                f"['namespace'] = {theirs[1]!r} (and the same kubeconfig), or leave it out"
            )

    async def cleanup(self) -> None:
        tasks = getattr(self, "_tasks", None)
        if tasks is not None:
            await tasks.close()
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
        """``method(*args, **kwargs)`` in this namespace, retried for ``api_retry_timeout``."""
        return await request_json(
            functools.partial(method, *args, **kwargs),
            verb=verb,
            resource=resource,
            namespace=self.namespace,
            request_timeout=self.request_timeout,
            retry_for=self.api_retry_timeout if retry_for is None else retry_for,
            log=self.log,
        )

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
        return await open_pod_watch(
            self.core,
            self.namespace,
            label_selector=self._selector,
            resource_version=resource_version,
            request_timeout=self.request_timeout,
            watch_timeout=self.watch_timeout,
        )

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

    # -- schedulers -------------------------------------------------------------------------------
    async def start_scheduler(self, cluster: Cluster) -> AsyncIterator[dict[str, Any]]:
        name = scheduler_pod_name(cluster.name)
        state: dict[str, Any] = {"pod": name, "created": time.time()}
        yield dict(state)  # recorded before the create: a crash now leaves a findable pod
        settings = self._manifest_settings()
        manifest = scheduler_pod(
            settings,
            cluster,
            api_url=self.context.api_url,
            heartbeat_period=self.context.heartbeat_period,
        )
        pod = await self._create_pod(manifest)
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
                self._create_owned("secrets", credentials_secret(settings, cluster, meta["uid"])),
                self._create_owned("services", scheduler_service(settings, cluster, meta["uid"])),
            ]
        )

    async def stop_scheduler(self, cluster: Cluster) -> None:
        self._reported_unschedulable.discard(cluster.name)
        # Deleting the pod garbage-collects the rest; delete it all explicitly anyway.
        await self._gather(
            [
                self._delete("pods", scheduler_pod_name(cluster.name)),
                self._delete("services", service_name(cluster.name)),
                self._delete("secrets", secret_name(cluster.name)),
            ]
        )

    async def check_schedulers(self, clusters: Sequence[Cluster]) -> list[Check]:
        """From the pod cache: alive unless the pod ended, or vanished after the cache saw it."""
        out = []
        for cluster in clusters:
            name = cluster.state.get("pod")
            pod = self.cache.pods.get(name) if name else None
            if pod is None:
                out.append(self._check_missing_pod(name, cluster.state))
                continue
            out.append(check_scheduler_pod(pod))
            why = unschedulable_reason(pod)
            if why and cluster.name not in self._reported_unschedulable:
                self._reported_unschedulable.add(cluster.name)
                self.context.add_event(cluster.name, f"scheduler pod {name} is {why}", "warning")
        return out

    def _check_missing_pod(self, name: str | None, state: dict[str, Any]) -> Check:
        """A pod not in the cache: deleted if the cache is past its creation, else pending."""
        if not name:
            return Check(Phase.PENDING, "the pod is not created yet")
        if self.cache.has_seen(state.get("created_rv"), state.get("created", 0)):
            return Check(Phase.FAILED, f"pod {name} was deleted")
        if self.cache.error:
            return Check(Phase.PENDING, f"Kubernetes API unreachable ({self.cache.error})")
        return Check(Phase.PENDING, "waiting for the pod watch")

    # -- workers --------------------------------------------------------------------------
    async def start_workers(
        self, cluster: Cluster, workers: Sequence[Worker], facts: ClusterFacts
    ) -> list[dict[str, Any]]:
        """Create every pod of the batch concurrently; undo the batch if any create failed."""
        if "uid" not in cluster.state:
            raise RuntimeError(f"cluster {cluster.name} has no scheduler pod to own its workers")
        settings = self._manifest_settings()
        results = await asyncio.gather(
            *(
                self._create_pod(worker_pod(settings, cluster, w.name, cluster.state["uid"]))
                for w in workers
            ),
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
                    *(self._delete("pods", worker_pod_name(n)) for n in made),
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
                "pod": worker_pod_name(w.name),
                "created": created,
                "created_rv": (pod.get("metadata") or {}).get("resourceVersion", ""),
            }
            for w, pod in zip(workers, results, strict=True)
        ]

    async def stop_workers(self, workers: Sequence[Worker]) -> None:
        # Workers without a pod in their state never got one (their batch failed); a pod
        # that exists anyway (a create that timed out but went through) is a stray that the
        # periodic reconciliation deletes.
        names = [w.state["pod"] for w in workers if w.state.get("pod")]
        if names:
            await self._gather([self._delete("pods", n) for n in names])

    async def stop_cluster_workers(self, cluster: Cluster, workers: Sequence[Worker]) -> None:
        """One deletecollection by label: also catches pods the database has no record of."""
        await self._call(
            "deletecollection",
            "pods",
            self.core.delete_collection_namespaced_pod,
            self.namespace,
            label_selector=cluster_workers_selector(self.gateway_id, cluster.name),
        )

    async def check_workers(self, workers: Sequence[Worker]) -> list[Check]:
        """Answered from the pod cache: no API call per check."""
        out = []
        for w in workers:
            name = w.state.get("pod")
            pod = self.cache.pods.get(name) if name else None
            out.append(
                check_pod(pod) if pod is not None else self._check_missing_pod(name, w.state)
            )
        return out

    async def fetch_logs(
        self, cluster: Cluster, workers: Sequence[Worker], scheduler: bool = False
    ) -> dict[str, str]:
        """The pods' logs from the log API (before the gateway deletes them)."""
        pods = {w.name: w.state["pod"] for w in workers if w.state.get("pod")}
        if scheduler:
            pods["scheduler"] = scheduler_pod_name(cluster.name)
        return await read_pod_logs(
            self.core,
            self.namespace,
            pods,
            limit_bytes=LOG_BYTES,
            request_timeout=self.request_timeout,
        )

    # -- reconciliation ----------------------------------------------------------------------------
    async def count_unknown(self, known: KnownRecords) -> int:
        """Pods of this gateway, not being deleted, whose cluster has no record in ``known``."""
        try:
            await asyncio.wait_for(self.cache.synced.wait(), self.startup_sync_timeout)
        except TimeoutError:
            return 0  # no pod list yet: nothing is removed until there is one either
        metas = (pod.get("metadata") or {} for pod in list(self.cache.pods.values()))
        return sum(
            1
            for meta in metas
            if not meta.get("deletionTimestamp")
            and (meta.get("labels") or {}).get(CLUSTER_LABEL) not in known.clusters
        )

    async def remove_unknown(self, known: KnownRecords) -> int:
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
        return await self._remove_strays(known)

    async def _remove_strays(self, known: KnownRecords) -> int:
        stray = []
        for name, pod in list(self.cache.pods.items()):
            meta = pod.get("metadata") or {}
            labels = meta.get("labels") or {}
            if meta.get("deletionTimestamp") or name in self._deleting:
                continue
            component = labels.get(COMPONENT_LABEL)
            if labels.get(CLUSTER_LABEL) not in known.clusters or (
                component == WORKER and labels.get(WORKER_LABEL) not in known.workers
            ):
                stray.append(name)
        if not stray:
            return 0
        self.log.warning(
            "Deleting %d pods with no active record (%s): %s",
            len(stray),
            self.context.name or self.kind,
            stray,
        )
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
        """Delete pods without a record, once ``remove_unknown`` ran; reads the cache only."""
        if self._reconcile_enabled and self.cache.connected:
            await self._remove_strays(self.context.known_records())
