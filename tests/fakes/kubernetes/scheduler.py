"""The scheduler part: binds the namespace's unassigned pods to the one Node when they fit.

It acts as ``system:kube-scheduler``. A pod whose requests fit what the Node has left (cpu,
memory, ``nvidia.com/gpu``, pod count, ``nodeSelector``) is bound through the ``binding``
subresource; one that does not gets ``PodScheduled=False, reason=Unschedulable`` with the real
scheduler's kind of message ("0/1 nodes are available: 1 Insufficient cpu.") and is retried
as room frees. What is bound to the Node it learns from the kubelet's watch of its pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from typing import Any

from tests.k8s.kubeclient import Kube

from .api import MERGE, TERMINAL, informer, now

log = logging.getLogger("kubelet")

# -- quantities --------------------------------------------------------------------------------
_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "2Gi", "1e9", 3) as a number."""
    text = str(value).strip()
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)", text)
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"bad quantity {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def pod_requests(pod: Mapping[str, Any]) -> dict[str, float]:
    """What a pod requests, summed over its containers (requests default to limits)."""
    total: dict[str, float] = {"pods": 1}
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        req = dict(res.get("limits") or {})
        req.update(res.get("requests") or {})  # requests default to limits
        for name, value in req.items():
            total[name] = total.get(name, 0) + quantity(value)
    return total


class Scheduler:
    """Binds pods of ``namespace`` to ``node_name`` within ``capacity`` (see module docstring)."""

    def __init__(
        self,
        kube: Kube,
        node_name: str,
        namespace: str,
        capacity: Mapping[str, str],
        labels: Mapping[str, str],
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self.namespace = namespace
        self.capacity = capacity
        self.labels = labels
        self.bound: dict[str, dict] = {}  # uid -> pod on this node (from the node watch)
        self.unbound: dict[str, dict] = {}  # uid -> unassigned pod in the namespace
        self.just_bound: dict[str, dict] = {}  # uid -> pod bound here, not yet seen bound
        self.wake = asyncio.Event()
        self.synced = False

    # -- what the kubelet's node watch tells it ----------------------------------------------
    def node_relisted(self) -> None:
        """The node watch re-listed: the pods it reports next are all that is bound."""
        self.bound = {}

    def node_pod_seen(self, uid: str, pod: dict) -> None:
        """A pod bound to the node, as the node watch saw it."""
        self.just_bound.pop(uid, None)
        self.bound[uid] = pod

    def node_pod_gone(self, uid: str) -> None:
        """A pod bound to the node was deleted."""
        self.just_bound.pop(uid, None)
        self.bound.pop(uid, None)

    # -- its own watch of unassigned pods ----------------------------------------------------
    async def watch_pods(self) -> None:
        """Follow the namespace's unassigned pods (forever)."""

        def synced() -> None:
            self.synced = True

        await informer(
            "scheduler",
            self.kube,
            f"/api/v1/namespaces/{self.namespace}/pods",
            {"fieldSelector": "spec.nodeName="},
            self.on_unbound_pod,
            self.on_unbound_relist,
            synced,
        )

    async def on_unbound_relist(self, pods: list[dict]) -> None:
        """The unassigned pods, listed afresh."""
        self.unbound = {p["metadata"]["uid"]: p for p in pods}
        self.wake.set()

    async def on_unbound_pod(self, kind: str, pod: dict) -> None:
        """A watch event for an unassigned pod (one that got a node leaves the list)."""
        uid = pod["metadata"]["uid"]
        if kind == "DELETED" or (pod.get("spec") or {}).get("nodeName"):
            self.unbound.pop(uid, None)
        else:
            self.unbound[uid] = pod
        self.wake.set()

    # -- scheduling --------------------------------------------------------------------------
    def used(self) -> dict[str, float]:
        """What the non-terminal pods bound here request, together."""
        total: dict[str, float] = {}
        pods = {**self.bound, **self.just_bound}
        for pod in pods.values():
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                continue
            for k, v in pod_requests(pod).items():
                total[k] = total.get(k, 0) + v
        return total

    def misfit(self, pod: dict, used: Mapping[str, float]) -> list[str]:
        """Why ``pod`` does not fit next to ``used``, in the scheduler's words (empty: fits)."""
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        if any(self.labels.get(k) != v for k, v in selector.items()):
            return ["node(s) didn't match Pod's node affinity/selector"]
        out = []
        for name, amount in pod_requests(pod).items():
            cap = quantity(self.capacity[name]) if name in self.capacity else 0
            if used.get(name, 0) + amount > cap + 1e-9:
                out.append("Too many pods" if name == "pods" else f"Insufficient {name}")
        return out

    async def loop(self) -> None:
        """Run a scheduling pass when woken, and at least every 2 s."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 2)
            self.wake.clear()
            try:
                await self.schedule_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduling pass failed: %r", exc)
                await asyncio.sleep(0.5)

    async def schedule_pass(self) -> None:
        """Bind every pending pod that fits, oldest first; mark the others Unschedulable."""
        pending = sorted(
            (p for p in self.unbound.values() if not p["metadata"].get("deletionTimestamp")),
            key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]),
        )
        for pod in pending:
            meta = pod["metadata"]
            used = self.used()
            problems = self.misfit(pod, used)
            if not problems:
                binding = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
                }
                status, _ = await self.kube.request(
                    "POST",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                    body=binding,
                    ok=(404, 409),
                )
                self.unbound.pop(meta["uid"], None)
                if status < 300:
                    self.just_bound[meta["uid"]] = pod
                    log.info("bound %s/%s to %s", meta["namespace"], meta["name"], self.node_name)
                continue
            counts: dict[str, int] = {}
            for p in problems:
                counts[p] = counts.get(p, 0) + 1
            message = (
                "0/1 nodes are available: "
                + ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
                + "."
            )
            current = next(
                (
                    c
                    for c in (pod.get("status") or {}).get("conditions") or []
                    if c.get("type") == "PodScheduled"
                ),
                {},
            )
            if current.get("reason") == "Unschedulable" and current.get("message") == message:
                continue
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": now(),
            }
            await self.kube.request(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                body={"status": {"conditions": [condition]}},
                content_type=MERGE,
                ok=(404, 409),
            )
            pod.setdefault("status", {})["conditions"] = [condition]
            log.info("%s/%s unschedulable: %s", meta["namespace"], meta["name"], message)
