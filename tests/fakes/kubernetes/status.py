"""Pod status reporting: what the kubelet tells the API server about a pod it runs.

``pod_status`` derives phase, conditions and ``containerStatuses`` from a ``PodRunner``'s
record (terminated containers get ``FallbackToLogsOnError`` messages from their log; pod and
host IP are 127.0.0.1, as every pod shares the host network). A ``StatusReporter`` keeps the
API server's copy equal to it through the ``status`` subresource: it retries with back-off
while the API server is away, and re-asserts the status when someone else (the node
lifecycle controller) changes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from tests.k8s.kubeclient import Kube, KubeError

from .api import LOCAL_IP, MERGE, NODE_IP, TERMINAL, now
from .pod_runner import PodRunner

log = logging.getLogger("kubelet")


def pod_status(runner: PodRunner) -> dict[str, Any]:
    """The status a kubelet would report for what ``runner`` has done so far."""
    spec = runner.pod.get("spec") or {}
    containers = spec.get("containers") or []
    statuses, all_done, any_failed, all_running = [], True, False, True
    for c in containers:
        name = c["name"]
        cs: dict[str, Any] = {
            "name": name,
            "image": c.get("image", ""),
            "imageID": "",
            "restartCount": 0,
        }
        if name in runner.exits:
            code, finished, msg = runner.exits[name]
            proc = runner.procs.get(name)
            term = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": runner.started_at.get(name, finished),
                "finishedAt": finished,
            }
            if proc is not None:
                term["containerID"] = cs["containerID"] = f"process://{proc.pid}"
            if name in runner.lost:
                term["reason"] = "ContainerStatusUnknown"
            if msg:
                term["message"] = msg
            cs.update(state={"terminated": term}, ready=False, started=False)
            any_failed = any_failed or code != 0
            all_running = False
        elif name in runner.procs:
            cs.update(
                state={"running": {"startedAt": runner.started_at[name]}},
                ready=True,
                started=True,
            )
            cs["containerID"] = f"process://{runner.procs[name].pid}"
            all_done = False
        else:
            reason, message = runner.waiting
            waiting = {"reason": reason}
            if message:
                waiting["message"] = message
            cs.update(state={"waiting": waiting}, ready=False, started=False)
            all_done = all_running = False
        statuses.append(cs)
    if containers and all_done:
        phase = "Failed" if any_failed else "Succeeded"
    elif runner.procs:
        phase = "Running"
    else:
        phase = "Pending"
    ready = phase == "Running" and all_running

    def cond(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        c = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": None}
        if reason and not ok:
            c["reason"] = reason
        return c

    done_reason = "PodCompleted" if phase in TERMINAL else "ContainersNotReady"
    status = {
        "phase": phase,
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": LOCAL_IP,
        "podIPs": [{"ip": LOCAL_IP}],
        "startTime": runner.start_time,
        "conditions": [
            cond("PodReadyToStartContainers", bool(runner.procs)),
            cond("Initialized", True),
            cond("Ready", ready, done_reason),
            cond("ContainersReady", ready, done_reason),
            cond("PodScheduled", True),
        ],
        "containerStatuses": statuses,
    }
    return status


class StatusReporter:
    """Sends one pod's status whenever it changes, until ``close()``."""

    def __init__(self, kube: Kube, runner: PodRunner) -> None:
        self.kube = kube
        self.runner = runner
        self.ns, self.name, self.uid, self.key = runner.ns, runner.name, runner.uid, runner.key
        self.status: dict[str, Any] = {}
        self.dirty = asyncio.Event()
        self.deleted = False
        self.task: asyncio.Future | None = None

    def start(self) -> None:
        """Start sending (in the background)."""
        self.task = asyncio.ensure_future(self.sync_status())

    def close(self) -> None:
        """The pod is gone or going: stop sending."""
        self.deleted = True
        if self.task is not None:
            self.task.cancel()

    def update(self) -> None:
        """The runner changed something: send the new status."""
        self.status = pod_status(self.runner)
        self.dirty.set()

    def observed(self, pod: dict) -> None:
        """A watch event for this pod: re-assert our status if someone else changed it."""
        if not self.status:
            return
        api = pod.get("status") or {}

        def summary(st: Mapping[str, Any]) -> tuple:
            return (
                st.get("phase"),
                st.get("podIP"),
                tuple(sorted((c["type"], c["status"]) for c in st.get("conditions") or [])),
                tuple(
                    sorted(
                        next(iter(c.get("state") or {}), "")
                        for c in st.get("containerStatuses") or []
                    )
                ),
            )

        if summary(api) != summary(self.status):
            self.dirty.set()

    async def sync_status(self) -> None:
        """Send the latest status; retry with back-off while the API server is away."""
        delay = 0.2
        while not self.deleted:
            await self.dirty.wait()
            self.dirty.clear()
            status = {**self.status}
            now_ts = now()
            status["conditions"] = [
                {**c, "lastTransitionTime": now_ts} for c in status.get("conditions", [])
            ]
            try:
                await self.kube.request(
                    "PATCH",
                    f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
                    body={"metadata": {"uid": self.uid}, "status": status},
                    content_type=MERGE,
                    seconds=10,
                )
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                if exc.status in (404, 409, 410):
                    return  # gone, or a new pod of the same name
                log.warning("%s: status update failed (%s); retrying", self.key, exc)
                self.dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
            except Exception as exc:
                log.warning("%s: status update failed (%r); retrying", self.key, exc)
                self.dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
