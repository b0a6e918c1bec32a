"""``KubernetesLauncher``: schedulers and workers as pods, and their lifecycle.

Starting and stopping schedulers and worker batches, status checks answered
from the pod cache (``watch.PodCache``, never an API call per cluster), and
the periodic deletion of pods without an active record. The settings are in
``settings``, the objects in ``manifests``, API calls and their retries in
``client``, the reading of pod status in ``status``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from dask_gateway_server.backends.db_base import JobStatus
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api

from ...pools import ConfigError
from ..base import Launcher, LauncherUnavailable, WorkerCheck, WorkerPhase
from .client import KubernetesAPIError, load_kube_config, open_pod_watch, request_json
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
from .status import check_pod, pod_alive, unschedulable_reason
from .watch import PodCache

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

    from ...backend import ElasticBackend


class KubernetesLauncher(KubernetesSettings, Launcher):
    """Schedulers and workers as Kubernetes pods (``kubernetes-asyncio``).

    The scheduler pod, its Service and its Secret (TLS certificate, key and API
    token, mounted as files) are created per cluster; worker pods mount the same
    Secret (without the token). Everything is owned by the scheduler pod, so the
    garbage collector removes a cluster whose scheduler pod is deleted. Status
    comes from one watch of this gateway's pods.
    """

    kind = "kubernetes"

    # -- what the launcher reads from the gateway backend ------------------------------------
    @property
    def _scheduler_launcher(self) -> Launcher:
        """The launcher running schedulers: worker pods need it to be this one."""
        return getattr(self.backend, "scheduler_launcher_instance", self)

    @property
    def _heartbeat_period(self) -> float:
        """How often schedulers heartbeat to the gateway."""
        return self.backend.cluster_heartbeat_period

    @property
    def _api_url(self) -> str:
        """Where schedulers heartbeat: the gateway's API as pods reach it."""
        return self.backend.api_url

    def _emit_event(self, cluster_name: str, message: str, level: str) -> None:
        """Tell the cluster's owner (``details()``, the widget), where the backend keeps events."""
        events = getattr(self.backend, "events", None)
        if events is not None:
            events.add(cluster_name, message, level)

    def _active_records(self) -> tuple[set[str], set[str]]:
        """Clusters and workers not stopped yet: the backend may still be stopping them."""
        clusters = [
            c for c in self.backend.db.name_to_cluster.values() if c.status < JobStatus.STOPPED
        ]
        return (
            {c.name for c in clusters},
            {w.name for c in clusters for w in c.workers.values() if w.status < JobStatus.STOPPED},
        )

    # -- lifecycle ------------------------------------------------------------------------------
    async def setup(self, backend: ElasticBackend) -> None:
        await super().setup(backend)
        if self._scheduler_launcher is not self:
            raise ConfigError(
                "a Kubernetes worker pool needs the scheduler in Kubernetes too: set "
                'c.ElasticBackend.scheduler_launcher = "kubernetes" (worker pods mount the '
                "Secret created with the scheduler pod and are owned by it)"
            )
        configuration = Configuration()
        self.namespace = await load_kube_config(
            configuration,
            kubeconfig=self.kubeconfig,
            context=self.context,
            namespace=self.namespace,
        )
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
            settings, cluster, api_url=self._api_url, heartbeat_period=self._heartbeat_period
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

    async def check_schedulers(self, clusters: Sequence[Cluster]) -> list[bool]:
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
                self._emit_event(cluster.name, f"scheduler pod {name} is {why}", "warning")
        return out

    # -- workers --------------------------------------------------------------------------
    async def start_workers(
        self, cluster: Cluster, workers: Sequence[Worker]
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

    async def check_workers(self, workers: Sequence[Worker]) -> list[WorkerCheck]:
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
            await self._remove_strays(*self._active_records())

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_period)
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("Reconciling pods with the database failed", exc_info=True)
