"""The kubelet part: registers the Node, renews its Lease and runs the pods bound to it.

It acts as ``system:node:<name>``, so the Node authorizer and NodeRestriction apply. It
watches pods with ``spec.nodeName=<node>`` and gives each a ``PodRunner`` (``pod_runner.py``)
and a ``StatusReporter`` (``status.py``). On graceful deletion it SIGTERMs the pod's process
groups, SIGKILLs them after the grace period, then confirms the deletion (grace 0) as a
kubelet does; on a DELETED event it kills at once. It also tells the scheduler what is bound
to the Node, which the scheduler needs to know what room is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.k8s.kubeclient import Kube

from .api import MERGE, NODE_IP, TERMINAL, informer, micro_now, now, retry
from .pod_runner import PodRunner, kill_group
from .scheduler import Scheduler
from .status import StatusReporter

log = logging.getLogger("kubelet")


def node_capacity(cpu: str, memory: str, max_pods: int, gpus: int) -> dict[str, str]:
    """The Node's capacity (and allocatable): what the scheduler fits pods into."""
    capacity = {"cpu": str(cpu), "memory": str(memory), "pods": str(max_pods)}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    return capacity


def node_labels(node_name: str) -> dict[str, str]:
    """The Node's labels (what ``nodeSelector`` can match)."""
    return {
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "elastic-gateway.test/process-kubelet": "true",
    }


@dataclass
class NodePod:
    """A pod this node runs: its processes and the reporter of its status."""

    runner: PodRunner
    reporter: StatusReporter


class Kubelet:
    """The node side of the process kubelet (see module docstring)."""

    def __init__(
        self,
        kube: Kube,
        scheduler: Scheduler,
        node_name: str,
        capacity: Mapping[str, str],
        labels: Mapping[str, str],
        root: Path,
        *,
        start_delay: float = 0.0,
        keep_files: bool = False,
    ) -> None:
        self.node = kube
        self.scheduler = scheduler
        self.node_name = node_name
        self.capacity = dict(capacity)
        self.labels = dict(labels)
        self.root = root
        self.start_delay = start_delay
        self.keep_files = keep_files
        self.pods: dict[str, NodePod] = {}  # uid -> pod run here
        self.pgids: set[int] = set()
        self.background: set[asyncio.Future] = set()
        self.synced = False
        self.kubelet_port = 0  # where the log server listens (0: none)

    async def start(self) -> None:
        """Make the pods' root directory and register the Node (retrying while the API is away)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        await retry(self.register_node, "register node")

    # -- node ------------------------------------------------------------------------------
    def node_status(self) -> dict[str, Any]:
        """A Ready Node with this capacity, on 127.0.0.1."""
        ts = now()

        def cond(kind, status, reason):
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "lastHeartbeatTime": ts,
                "lastTransitionTime": ts,
            }

        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
                cond("Ready", "True", "KubeletReady"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "nodeInfo": {
                "machineID": "process-kubelet",
                "systemUUID": "process-kubelet",
                "bootID": "process-kubelet",
                "kernelVersion": os.uname().release,
                "osImage": "process kubelet (tests/fakes/kubernetes)",
                "containerRuntimeVersion": "process://1",
                "kubeletVersion": "v1.36.4",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register_node(self) -> None:
        """Create the Node (or take over an existing one) and set its status."""
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": self.labels},
            "spec": {},
            "status": self.node_status(),
        }
        await self.node.request("POST", "/api/v1/nodes", body=body, ok=(409,))
        await self.node.request(
            "PATCH",
            f"/api/v1/nodes/{self.node_name}/status",
            body={"status": self.node_status()},
            content_type=MERGE,
        )
        log.info("node %s registered with capacity %s", self.node_name, self.capacity)

    async def lease_loop(self) -> None:
        """Renew the node Lease every 10 s, as a kubelet's heartbeat does."""
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        while True:
            try:
                lease = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                    "spec": {
                        "holderIdentity": self.node_name,
                        "leaseDurationSeconds": 40,
                        "renewTime": micro_now(),
                    },
                }
                status, _ = await self.node.request("POST", path, body=lease, ok=(409,), seconds=5)
                if status == 409:
                    await self.node.request(
                        "PATCH",
                        f"{path}/{self.node_name}",
                        body={"spec": {"renewTime": micro_now(), "holderIdentity": self.node_name}},
                        content_type=MERGE,
                        seconds=5,
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("lease renewal failed: %r", exc)
            await asyncio.sleep(10)

    # -- pods bound to the node ------------------------------------------------------------
    async def watch_pods(self) -> None:
        """Follow the pods bound to this Node (forever)."""

        def synced() -> None:
            self.synced = True

        await informer(
            "node",
            self.node,
            "/api/v1/pods",
            {"fieldSelector": f"spec.nodeName={self.node_name}"},
            self.on_node_pod,
            self.on_node_relist,
            synced,
        )

    async def on_node_relist(self, pods: list[dict]) -> None:
        """The bound pods, listed afresh: those missing were deleted meanwhile."""
        present = {p["metadata"]["uid"] for p in pods}
        for uid in list(self.pods):
            if uid not in present:
                await self.on_node_pod("DELETED", self.pods[uid].runner.pod)
        self.scheduler.node_relisted()
        for p in pods:
            await self.on_node_pod("ADDED", p)

    async def on_node_pod(self, kind: str, pod: dict) -> None:
        """A watch event for a pod bound here: admit it, follow its deletion, or kill it."""
        meta = pod["metadata"]
        uid = meta["uid"]
        if kind == "DELETED":
            self.scheduler.node_pod_gone(uid)
            gone = self.pods.pop(uid, None)
            if gone is not None:
                self.spawn(self._kill(gone))
            self.scheduler.wake.set()
            return
        self.scheduler.node_pod_seen(uid, pod)
        known = self.pods.get(uid)
        phase = (pod.get("status") or {}).get("phase")
        if known is None:
            if meta.get("deletionTimestamp"):
                # Never started here: confirm the deletion at once.
                await self._confirm_unstarted(pod)
                return
            if phase in TERMINAL:
                return
            self._admit(pod)
            return
        runner = known.runner
        runner.pod = pod
        known.reporter.observed(pod)
        if meta.get("deletionTimestamp") and not runner.stopping:
            grace = meta.get("deletionGracePeriodSeconds") or 0
            log.info("%s: deleting (grace %ss)", runner.key, grace)
            runner.stopping = True

            async def finish(p=known, g=grace, u=uid):
                await self._terminate_and_confirm(p, g)
                self.pods.pop(u, None)

            self.spawn(finish())
        if phase in TERMINAL:
            self.scheduler.wake.set()

    async def _confirm_unstarted(self, pod: dict) -> None:
        """Confirm the deletion of a pod that never ran here."""
        meta = pod["metadata"]
        with contextlib.suppress(Exception):
            await self.node.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                ok=(404, 409),
            )

    def _admit(self, pod: dict) -> None:
        """Start running a pod newly bound here, with its status reported from the start."""
        runner = PodRunner(
            pod,
            self.root,
            self.node,
            start_delay=self.start_delay,
            keep_files=self.keep_files,
            pgids=self.pgids,
        )
        reporter = StatusReporter(self.node, runner)
        runner.on_change = reporter.update
        self.pods[runner.uid] = NodePod(runner, reporter)
        runner.start()
        reporter.start()

    async def _terminate_and_confirm(self, pod: NodePod, grace: float) -> None:
        """Graceful deletion: stop the containers, then confirm the deletion (grace 0).

        Confirmed means the pod is gone from the API server, as a kubelet's status manager
        checks: a kube-apiserver just restarted may answer the DELETE 404 while the pod
        is still there (seen in benchmarks/chaos.py), so a 404 or 409 is checked with a GET.
        """
        runner = pod.runner
        await runner.stop(grace)
        pod.reporter.close()
        path = f"/api/v1/namespaces/{runner.ns}/pods/{runner.name}"
        delay = 0.2
        while True:
            try:
                status, _ = await self.node.request(
                    "DELETE",
                    path,
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": runner.uid}},
                    ok=(404, 409),
                    seconds=10,
                )
                if status < 300 or not await self._still_there(path, runner.uid):
                    break
                log.warning(
                    "%s: the API server answered %s, but the pod is there", runner.key, status
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: confirming deletion failed (%r); retrying", runner.key, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
        runner.cleanup_files()

    async def _still_there(self, path: str, uid: str) -> bool:
        """Whether the pod at ``path`` still exists with this ``uid``."""
        status, found = await self.node.request("GET", path, ok=(404,), seconds=10)
        return status < 300 and (found.get("metadata") or {}).get("uid") == uid

    @staticmethod
    async def _kill(pod: NodePod) -> None:
        """The pod is gone from the API: stop reporting and kill its containers at once."""
        pod.reporter.close()
        await pod.runner.stop(0)
        pod.runner.cleanup_files()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def shutdown(self) -> None:
        """Kill every pod's containers (whatever they are doing) and any process group left."""
        await asyncio.gather(
            *(self._kill(p) for p in list(self.pods.values())), return_exceptions=True
        )
        for pid in list(self.pgids):
            kill_group(pid, signal.SIGKILL)
