"""A process kubelet: runs the pods bound to one Node as local processes, for tests.

It stands in for a kubelet and a scheduler on a control plane that has neither:

- registers a Node (Ready, with a capacity) and renews its Lease like a kubelet;
- *scheduler part* (as ``system:kube-scheduler``): binds unassigned pods of its namespace to the
  Node through the ``binding`` subresource when their requests fit the Node's capacity
  (cpu, memory, ``nvidia.com/gpu``, pod count, ``nodeSelector``), and otherwise sets
  ``PodScheduled=False, reason=Unschedulable`` with the scheduler's kind of message
  ("0/1 nodes are available: 1 Insufficient cpu.") — real conditions, retried as room frees;
- *kubelet part* (as ``system:node:<name>``, so the Node authorizer and NodeRestriction apply):
  watches pods with ``spec.nodeName=<node>``; for each, reads the Secrets/ConfigMaps its
  volumes and env reference (waiting, as a kubelet does, while a Secret does not exist yet),
  materialises them as files in a per-pod scratch directory (mode 0700; file modes from
  ``defaultMode``/``items[].mode``), resolves ``env`` (``value``, ``valueFrom.secretKeyRef``,
  ``configMapKeyRef``, ``fieldRef``) and ``$(VAR)`` references, and starts each container's
  ``command + args`` as a local process group. The image is ignored: processes run with this
  Python's ``bin/`` first on PATH (so ``dask`` is the test venv's).
- **Path mapping**: a container path under a volume's ``mountPath`` that appears as a whole
  value or a prefix of a value (``/etc/dask-credentials/dask.pem``) in env values, command,
  args or ``workingDir`` is rewritten to the scratch directory's copy. hostPath volumes map to
  the host path itself; emptyDir to a fresh directory.
- reports ``phase``, ``podIP``/``hostIP`` 127.0.0.1 (all pods share the host network),
  conditions and ``containerStatuses`` through the ``status`` subresource (terminated
  containers get ``FallbackToLogsOnError`` messages from their log), re-asserting them if
  someone else (the node lifecycle controller) changes them;
- on graceful deletion SIGTERMs the process group, SIGKILLs it after the grace period, then
  confirms the deletion (grace 0) as a kubelet does; on a DELETED event it kills at once.

Run: ``python tests/k8s/kubelet.py --node N --node-kubeconfig A --scheduler-kubeconfig B
--namespace NS --root DIR [--cpu 8 --memory 16Gi --max-pods 20 --gpus 0] --ready-file F``.
SIGTERM stops every process it started (children die with it too: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import datetime
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kubeclient import Kube, KubeError

log = logging.getLogger("kubelet")
LOCAL_IP = "127.0.0.1"
TERMINAL = ("Succeeded", "Failed")
MERGE = "application/merge-patch+json"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    total: dict[str, float] = {"pods": 1}
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        req = dict(res.get("limits") or {})
        req.update(res.get("requests") or {})  # requests default to limits
        for name, value in req.items():
            total[name] = total.get(name, 0) + quantity(value)
    return total


# -- processes ---------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:
    """In the child: die with the kubelet (PR_SET_PDEATHSIG = SIGKILL)."""
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class PodRunner:
    """One pod: its files, its processes, its status."""

    def __init__(self, kubelet: Kubelet, pod: dict) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.key = f"{self.ns}/{self.name}"
        self.dir = kubelet.root / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.started_at: dict[str, str] = {}
        self.exits: dict[str, tuple[int, str, str]] = {}  # container -> (code, finished, msg)
        self.waiting = ("ContainerCreating", "")
        self.start_time = now()
        self.status: dict[str, Any] = {}
        self.dirty = asyncio.Event()
        self.stopping = False
        self.deleted = False
        self.task = asyncio.ensure_future(self.run())
        self.sync_task = asyncio.ensure_future(self.sync_status())

    # -- status ----------------------------------------------------------------------------
    def desired_status(self) -> dict[str, Any]:
        spec = self.pod.get("spec") or {}
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
            if name in self.exits:
                code, finished, msg = self.exits[name]
                term = {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": self.started_at.get(name, finished),
                    "finishedAt": finished,
                    "containerID": f"process://{self.procs[name].pid}",
                }
                if msg:
                    term["message"] = msg
                cs.update(state={"terminated": term}, ready=False, started=False)
                cs["containerID"] = term["containerID"]
                any_failed = any_failed or code != 0
                all_running = False
            elif name in self.procs:
                cs.update(
                    state={"running": {"startedAt": self.started_at[name]}},
                    ready=True,
                    started=True,
                )
                cs["containerID"] = f"process://{self.procs[name].pid}"
                all_done = False
            else:
                reason, message = self.waiting
                waiting = {"reason": reason}
                if message:
                    waiting["message"] = message
                cs.update(state={"waiting": waiting}, ready=False, started=False)
                all_done = all_running = False
            statuses.append(cs)
        if containers and all_done:
            phase = "Failed" if any_failed else "Succeeded"
        elif self.procs:
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
            "hostIP": LOCAL_IP,
            "hostIPs": [{"ip": LOCAL_IP}],
            "podIP": LOCAL_IP,
            "podIPs": [{"ip": LOCAL_IP}],
            "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", bool(self.procs)),
                cond("Initialized", True),
                cond("Ready", ready, done_reason),
                cond("ContainersReady", ready, done_reason),
                cond("PodScheduled", True),
            ],
            "containerStatuses": statuses,
        }
        return status

    def update(self) -> None:
        self.status = self.desired_status()
        self.dirty.set()

    def observed(self, pod: dict) -> None:
        """A watch event for this pod: re-assert our status if someone else changed it."""
        self.pod = pod
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
                await self.kubelet.node.request(
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

    # -- files and environment -------------------------------------------------------------
    async def _get(self, kind: str, name: str, optional: bool = False) -> dict | None:
        """A Secret/ConfigMap, waiting while it does not exist (or the authorizer lags)."""
        path = f"/api/v1/namespaces/{self.ns}/{kind}/{name}"
        delay = 0.2
        while True:
            try:
                return await self.kubelet.node.get(path)
            except KubeError as exc:
                if exc.status == 404 and optional:
                    return None
                if exc.status not in (403, 404) and exc.status < 500:
                    raise
                self.waiting = ("ContainerCreating", f"{kind[:-1]} {name!r}: {exc.status}")
                self.update()
            except (TimeoutError, OSError) as exc:
                self.waiting = ("ContainerCreating", f"{kind[:-1]} {name!r}: {exc!r}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3)

    @staticmethod
    def _data(obj: dict) -> dict[str, bytes]:
        if obj.get("kind") == "Secret" or "type" in obj:
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out

    def _write(self, directory: Path, data: dict[str, bytes], items, mode: int) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        chosen = items or [{"key": k, "path": k} for k in data]
        for item in chosen:
            if item["key"] not in data:
                raise RuntimeError(f"key {item['key']!r} not found in {directory.name}")
            path = directory / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data[item["key"]])
            os.chmod(path, item.get("mode", mode))

    async def materialise(self) -> dict[str, str]:
        """Volumes as directories under the scratch dir; returns mountPath -> local path."""
        spec = self.pod.get("spec") or {}
        volumes: dict[str, str] = {}
        vroot = self.dir / "volumes"
        for vol in spec.get("volumes") or []:
            name = vol["name"]
            target = vroot / name
            if "secret" in vol:
                src = vol["secret"]
                obj = await self._get("secrets", src["secretName"], src.get("optional", False))
                data = self._data(obj) if obj else {}
                self._write(target, data, src.get("items"), src.get("defaultMode", 0o644))
            elif "configMap" in vol:
                src = vol["configMap"]
                obj = await self._get("configmaps", src["name"], src.get("optional", False))
                data = self._data(obj) if obj else {}
                self._write(target, data, src.get("items"), src.get("defaultMode", 0o644))
            elif "hostPath" in vol:
                volumes[name] = vol["hostPath"]["path"]
                continue
            else:
                if "emptyDir" not in vol:
                    log.warning(
                        "%s: volume %s (%s) becomes an empty directory", self.key, name, vol
                    )
                target.mkdir(parents=True, exist_ok=True, mode=0o700)
            volumes[name] = str(target)
        mounts: dict[str, str] = {}
        for c in spec.get("containers") or []:
            for m in c.get("volumeMounts") or []:
                local = volumes.get(m["name"])
                if local is not None:
                    sub = m.get("subPath")
                    mounts[m["mountPath"].rstrip("/") or "/"] = (
                        os.path.join(local, sub) if sub else local
                    )
        return mounts

    @staticmethod
    def map_path(value: str, mounts: Mapping[str, str]) -> str:
        for mount in sorted(mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount + "/"):
                return mounts[mount] + value[len(mount) :]
        return value

    @staticmethod
    def expand(value: str, env: Mapping[str, str]) -> str:
        """Kubernetes' $(VAR) expansion ($$ escapes)."""

        def sub(m: re.Match) -> str:
            if m.group(0).startswith("$$"):
                return m.group(0)[1:]
            return env.get(m.group(1), m.group(0))

        return re.sub(r"\$\$\(|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)

    async def container_env(self, c: dict, mounts: Mapping[str, str]) -> dict[str, str]:
        meta, spec = self.pod["metadata"], self.pod.get("spec") or {}
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": LOCAL_IP,
            "status.hostIP": LOCAL_IP,
        }
        env: dict[str, str] = {}
        for e in c.get("env") or []:
            name = e["name"]
            if "value" in e:
                env[name] = self.map_path(self.expand(e["value"], env), mounts)
                continue
            src = e.get("valueFrom") or {}
            if "secretKeyRef" in src or "configMapKeyRef" in src:
                kind = "secrets" if "secretKeyRef" in src else "configmaps"
                ref = src.get("secretKeyRef") or src.get("configMapKeyRef")
                obj = await self._get(kind, ref["name"], ref.get("optional", False))
                data = self._data(obj) if obj else {}
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise RuntimeError(f"env {name}: key {ref['key']!r} not in {ref['name']}")
            elif "fieldRef" in src:
                env[name] = fields.get(src["fieldRef"]["fieldPath"], "")
            else:
                env[name] = ""
        return env

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.update()
            if self.kubelet.args.start_delay:  # what an image pull would take
                await asyncio.sleep(self.kubelet.args.start_delay)
            mounts = await self.materialise()
            for c in (self.pod.get("spec") or {}).get("containers") or []:
                if self.stopping:
                    return
                await self.start_container(c, mounts)
            self.update()
            await asyncio.gather(*(self.wait_container(n) for n in list(self.procs)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: cannot start", self.key)
            self.waiting = ("CreateContainerConfigError", str(exc)[:500])
            self.update()

    async def start_container(self, c: dict, mounts: Mapping[str, str]) -> None:
        command = list(c.get("command") or []) + list(c.get("args") or [])
        if not command:
            raise RuntimeError("the process kubelet needs an explicit command (it ignores images)")
        env = await self.container_env(c, mounts)
        command = [self.map_path(self.expand(a, env), mounts) for a in command]
        cwd = self.map_path(c.get("workingDir") or "", mounts) or str(self.dir)
        base = {
            "PATH": os.pathsep.join(
                [os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]
            ),
            "HOME": str(self.dir),
            "LANG": "C.UTF-8",
            "HOSTNAME": self.name,
        }
        base.update(env)
        log_path = self.dir / f"{c['name']}.log"
        out = await asyncio.to_thread(open, log_path, "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                env=base,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        finally:
            out.close()
        self.procs[c["name"]] = proc
        self.started_at[c["name"]] = now()
        self.kubelet.pgids.add(proc.pid)
        log.info("%s: started %s as pid %d: %s", self.key, c["name"], proc.pid, command)

    async def wait_container(self, name: str) -> None:
        proc = self.procs[name]
        code = await proc.wait()
        self.kubelet.pgids.discard(proc.pid)
        kill_group(proc.pid, signal.SIGKILL)  # whatever it left behind in its group
        c = next(c for c in self.pod["spec"]["containers"] if c["name"] == name)
        msg = ""
        if code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            msg = self.log_tail(name)
        self.exits[name] = (code if code >= 0 else 128 - code, now(), msg)
        log.info("%s: container %s exited with %s", self.key, name, code)
        self.update()

    def log_tail(self, name: str, lines: int = 80, limit: int = 2048) -> str:
        try:
            data = (self.dir / f"{name}.log").read_bytes()[-limit:]
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    async def stop(self, grace: float) -> None:
        """SIGTERM every container's group, SIGKILL after ``grace`` seconds."""
        self.stopping = True
        alive = [p for p in self.procs.values() if p.returncode is None]
        for p in alive:
            kill_group(p.pid, signal.SIGTERM)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in alive)), max(grace, 0.1))
        for p in self.procs.values():
            kill_group(p.pid, signal.SIGKILL)
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def terminate_and_confirm(self, grace: float) -> None:
        await self.stop(grace)
        self.deleted = True
        self.sync_task.cancel()
        delay = 0.2
        while True:
            try:
                await self.kubelet.node.request(
                    "DELETE",
                    f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                    ok=(404, 409),
                    seconds=10,
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: confirming deletion failed (%r); retrying", self.key, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
        self.cleanup_files()

    async def kill(self) -> None:
        self.deleted = True
        self.sync_task.cancel()
        await self.stop(0)
        self.cleanup_files()

    def cleanup_files(self) -> None:
        if not self.kubelet.keep_files:
            shutil.rmtree(self.dir / "volumes", ignore_errors=True)


class Kubelet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node_name = args.node
        self.namespace = args.namespace
        self.root = Path(args.root).resolve()
        self.keep_files = args.keep_files
        self.capacity = {
            "cpu": str(args.cpu),
            "memory": str(args.memory),
            "pods": str(args.max_pods),
        }
        if args.gpus:
            self.capacity["nvidia.com/gpu"] = str(args.gpus)
        self.labels = {
            "kubernetes.io/hostname": args.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "elastic-gateway.test/process-kubelet": "true",
        }
        self.runners: dict[str, PodRunner] = {}  # uid -> runner
        self.bound: dict[str, dict] = {}  # uid -> pod on this node (from the node watch)
        self.unbound: dict[str, dict] = {}  # uid -> unassigned pod in the namespace
        self.just_bound: dict[str, dict] = {}  # uid -> pod bound here, not yet seen bound
        self.pgids: set[int] = set()
        self.background: set[asyncio.Future] = set()
        self.schedule_now = asyncio.Event()
        self.synced = {"node": False, "scheduler": False}

    async def start(self) -> None:
        self.node = await Kube.connect(self.args.node_kubeconfig)
        self.sched = await Kube.connect(self.args.scheduler_kubeconfig)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.retry(self.register_node, "register node")
        self.tasks = [
            asyncio.ensure_future(self.lease_loop()),
            asyncio.ensure_future(
                self.informer(
                    "node",
                    self.node,
                    "/api/v1/pods",
                    {"fieldSelector": f"spec.nodeName={self.node_name}"},
                    self.on_node_pod,
                    self.on_node_relist,
                )
            ),
            asyncio.ensure_future(
                self.informer(
                    "scheduler",
                    self.sched,
                    f"/api/v1/namespaces/{self.namespace}/pods",
                    {"fieldSelector": "spec.nodeName="},
                    self.on_unbound_pod,
                    self.on_unbound_relist,
                )
            ),
            asyncio.ensure_future(self.scheduler_loop()),
        ]

    async def retry(self, fn, what: str, attempts: int = 50) -> Any:
        delay = 0.2
        for i in range(attempts):
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if i == attempts - 1:
                    raise
                log.warning("%s failed (%r); retrying", what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3)

    # -- node ------------------------------------------------------------------------------
    def node_status(self) -> dict[str, Any]:
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
            "addresses": [
                {"type": "InternalIP", "address": LOCAL_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "nodeInfo": {
                "machineID": "process-kubelet",
                "systemUUID": "process-kubelet",
                "bootID": "process-kubelet",
                "kernelVersion": os.uname().release,
                "osImage": "process kubelet (tests/k8s/kubelet.py)",
                "containerRuntimeVersion": "process://1",
                "kubeletVersion": "v1.36.4",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register_node(self) -> None:
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

    # -- informers -------------------------------------------------------------------------
    async def informer(self, name, kube, path, query, on_event, on_relist) -> None:
        rv = ""
        delay = 0.2
        while True:
            try:
                if not rv:
                    body = await kube.get(path, query)
                    rv = body["metadata"]["resourceVersion"]
                    await on_relist(body.get("items") or [])
                    self.synced[name] = True
                async for event in kube.watch(path, query, rv, seconds=30):
                    obj = event.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if event["type"] != "BOOKMARK":
                        await on_event(event["type"], obj)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                if exc.status == 410:
                    log.info("%s watch expired; re-listing", name)
                    rv = ""
                    continue
                log.warning("%s watch failed: %s", name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3)
            except Exception as exc:
                log.info("%s watch failed: %r", name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3)

    async def on_node_relist(self, pods: list[dict]) -> None:
        present = {p["metadata"]["uid"] for p in pods}
        for uid in list(self.runners):
            if uid not in present:
                await self.on_node_pod("DELETED", self.runners[uid].pod)
        self.bound = {}
        for p in pods:
            await self.on_node_pod("ADDED", p)

    async def on_node_pod(self, kind: str, pod: dict) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        self.just_bound.pop(uid, None)
        if kind == "DELETED":
            self.bound.pop(uid, None)
            runner = self.runners.pop(uid, None)
            if runner is not None:
                self.spawn(runner.kill())
            self.schedule_now.set()
            return
        self.bound[uid] = pod
        runner = self.runners.get(uid)
        phase = (pod.get("status") or {}).get("phase")
        if runner is None:
            if meta.get("deletionTimestamp"):
                # Never started here: confirm the deletion at once.
                await self._confirm_unstarted(pod)
                return
            if phase in TERMINAL:
                return
            self.runners[uid] = PodRunner(self, pod)
            return
        runner.observed(pod)
        if meta.get("deletionTimestamp") and not runner.stopping:
            grace = meta.get("deletionGracePeriodSeconds") or 0
            log.info("%s: deleting (grace %ss)", runner.key, grace)
            runner.stopping = True

            async def finish(r=runner, g=grace, u=uid):
                await r.terminate_and_confirm(g)
                self.runners.pop(u, None)

            self.spawn(finish())
        if phase in TERMINAL:
            self.schedule_now.set()

    async def _confirm_unstarted(self, pod: dict) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(Exception):
            await self.node.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                ok=(404, 409),
            )

    async def on_unbound_relist(self, pods: list[dict]) -> None:
        self.unbound = {p["metadata"]["uid"]: p for p in pods}
        self.schedule_now.set()

    async def on_unbound_pod(self, kind: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED" or (pod.get("spec") or {}).get("nodeName"):
            self.unbound.pop(uid, None)
        else:
            self.unbound[uid] = pod
        self.schedule_now.set()

    # -- scheduler -------------------------------------------------------------------------
    def used(self) -> dict[str, float]:
        total: dict[str, float] = {}
        pods = {**self.bound, **self.just_bound}
        for pod in pods.values():
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                continue
            for k, v in pod_requests(pod).items():
                total[k] = total.get(k, 0) + v
        return total

    def misfit(self, pod: dict, used: Mapping[str, float]) -> list[str]:
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        if any(self.labels.get(k) != v for k, v in selector.items()):
            return ["node(s) didn't match Pod's node affinity/selector"]
        out = []
        for name, amount in pod_requests(pod).items():
            cap = quantity(self.capacity[name]) if name in self.capacity else 0
            if used.get(name, 0) + amount > cap + 1e-9:
                out.append("Too many pods" if name == "pods" else f"Insufficient {name}")
        return out

    async def scheduler_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.schedule_now.wait(), 2)
            self.schedule_now.clear()
            try:
                await self.schedule_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduling pass failed: %r", exc)
                await asyncio.sleep(0.5)

    async def schedule_pass(self) -> None:
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
                status, _ = await self.sched.request(
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
            await self.sched.request(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                body={"status": {"conditions": [condition]}},
                content_type=MERGE,
                ok=(404, 409),
            )
            pod.setdefault("status", {})["conditions"] = [condition]
            log.info("%s/%s unschedulable: %s", meta["namespace"], meta["name"], message)

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- shutdown --------------------------------------------------------------------------
    async def shutdown(self) -> None:
        for task in getattr(self, "tasks", []):
            task.cancel()
        await asyncio.gather(*getattr(self, "tasks", []), return_exceptions=True)
        await asyncio.gather(
            *(r.kill() for r in list(self.runners.values())), return_exceptions=True
        )
        for pid in list(self.pgids):
            kill_group(pid, signal.SIGKILL)
        for kube in (getattr(self, "node", None), getattr(self, "sched", None)):
            if kube is not None:
                with contextlib.suppress(Exception):
                    await kube.close()


async def main(args: argparse.Namespace) -> None:
    kubelet = Kubelet(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await kubelet.start()
        deadline = time.monotonic() + 60
        while not all(kubelet.synced.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"watches not synced: {kubelet.synced}")
            await asyncio.sleep(0.05)
        if args.ready_file:
            Path(args.ready_file).write_text(str(os.getpid()))
        log.info("process kubelet %s ready", args.node)
        await stop.wait()
    finally:
        log.info("process kubelet %s stopping", args.node)
        await kubelet.shutdown()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--node", required=True)
    p.add_argument("--node-kubeconfig", required=True, help="as system:node:<node>")
    p.add_argument("--scheduler-kubeconfig", required=True, help="as system:kube-scheduler")
    p.add_argument("--namespace", required=True, help="namespace whose pods it schedules")
    p.add_argument("--root", required=True, help="scratch directory for pods")
    p.add_argument("--cpu", default="8")
    p.add_argument("--memory", default="32Gi")
    p.add_argument("--max-pods", type=int, default=50)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds before a pod starts")
    p.add_argument("--ready-file", default="")
    p.add_argument("--keep-files", action="store_true", help="keep Secret files after pods end")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(main(parse_args()))
