"""What a pod's status means for the gateway, in reasons an analyst can act on.

Pure functions of the pod dict as the API (and so the watch cache) returns it:
the phase, the ``PodScheduled`` and ``Ready`` conditions and the containers'
waiting or terminated states become a ``Check`` and its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..base import Check, Phase
from ..exit_reasons import MEMORY_ADVICE, MEMORY_KILLED, exit_text

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
# Waiting reasons of an image that cannot be pulled (maybe only for now: a registry outage).
IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff"})
MAX_REASON = 400


def shorten(text: str) -> str:
    """``text`` on one line and at most ``MAX_REASON`` characters: reasons land in events."""
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
        return shorten(f"unschedulable: {cond.get('message') or 'no node fits the pod'}")
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
            text = _terminated_text(cs.get("name"), term)
            if term.get("message"):
                text += f"; last log lines: {term['message'].strip()}"
            parts.append(text)
    if status.get("reason") == "Evicted":
        parts.append(f"the pod was evicted from its node: {status.get('message', '')}".strip())
    elif status.get("reason") or status.get("message"):
        parts.append(f"{status.get('reason', '')} {status.get('message', '')}".strip())
    return shorten(f"pod {status.get('phase', 'ended').lower()}: " + ("; ".join(parts) or "?"))


def _terminated_text(container: str | None, term: Mapping[str, Any]) -> str:
    """``container worker was killed for exceeding its memory limit (OOMKilled, exit code
    137)``, ``container worker was killed by signal 9 ...``, ``container worker Error (exit
    code 3)``."""
    reason, code = term.get("reason") or "terminated", term.get("exitCode")
    if reason == "OOMKilled":
        return f"container {container} was {MEMORY_KILLED} (OOMKilled, exit code {code}): " + (
            MEMORY_ADVICE
        )
    if isinstance(code, int) and code > 128 and reason != "Completed":
        return f"container {container} {exit_text(signum=code - 128)} ({reason}, exit code {code})"
    return f"container {container} {reason} (exit code {code})"


def image_pull_reason(container: str | None, waiting: Mapping[str, Any]) -> str:
    """The analyst's words for an image that cannot be pulled."""
    return shorten(
        f"the image of container {container} cannot be pulled ({waiting.get('reason')}: "
        f"{waiting.get('message', '')}): check the image name of the profile or pool; if it "
        "is right, the registry may be unreachable (ask the admins)"
    )


def check_pod(pod: Mapping[str, Any]) -> Check:
    """What a worker pod's status means for the gateway."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase in ("Succeeded", "Failed"):
        return Check(Phase.FAILED, termination_reason(pod))
    if meta.get("deletionTimestamp"):
        return Check(Phase.FAILED, "the pod is being deleted")
    waiting = []
    for cs in status.get("containerStatuses") or []:
        w = (cs.get("state") or {}).get("waiting")
        if w:
            if w.get("reason") in PERMANENT_WAITING:
                why = f"container {cs.get('name')}: {w.get('reason')}: {w.get('message', '')}"
                return Check(Phase.FAILED, shorten(why))
            if w.get("reason") in IMAGE_PULL:
                return Check(Phase.PENDING, image_pull_reason(cs.get("name"), w))
            waiting.append(f"{w.get('reason', 'waiting')}: {w.get('message', '')}".rstrip(": "))
    if phase == "Running":
        ready = _condition(pod, "Ready")
        if ready and ready.get("status") == "True":
            return Check(Phase.RUNNING)
        return Check(Phase.PENDING, shorten("running, not ready yet " + "; ".join(waiting)))
    if phase == "Unknown":
        return Check(Phase.PENDING, "pod status unknown (its node is unreachable)")
    unschedulable = unschedulable_reason(pod)
    if unschedulable:
        return Check(Phase.PENDING, unschedulable)
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        return Check(Phase.PENDING, "waiting for the Kubernetes scheduler")
    return Check(
        Phase.PENDING,
        shorten(f"starting on node {node}" + (f" ({'; '.join(waiting)})" if waiting else "")),
    )


def pod_alive(pod: Mapping[str, Any]) -> bool:
    """A scheduler pod that is pending or running and not being deleted."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def check_scheduler_pod(pod: Mapping[str, Any]) -> Check:
    """What a scheduler pod's status means: like a worker's, but failed only once it ended.

    A container that cannot start (a bad image, say) leaves the pod pending, with
    that reason: the cluster's start timeout, not the check, gives up on it.
    """
    check = check_pod(pod)
    if pod_alive(pod) and not check.alive:
        return Check(Phase.PENDING, check.reason)
    return check
