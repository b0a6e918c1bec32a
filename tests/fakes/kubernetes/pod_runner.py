"""The pod runner: one pod's containers as local process groups, as a kubelet would run them.

It reads the Secrets/ConfigMaps the pod's volumes and env reference (waiting, as a kubelet
does, while one does not exist yet), writes them as files in a per-pod scratch directory
(mode 0700; file modes from ``defaultMode``/``items[].mode``), resolves ``env`` (``value``,
``valueFrom.secretKeyRef``, ``configMapKeyRef``, ``fieldRef``) and ``$(VAR)`` references, and
starts each container's ``command + args`` in its own process group. The image is ignored:
processes run with this Python's ``bin/`` first on PATH (so ``dask`` is the test venv's).

**Path mapping**: a container path under a volume's ``mountPath`` that appears as a whole
value or a prefix of a value (``/etc/dask-credentials/dask.pem``) in env values, command,
args or ``workingDir`` is rewritten to the scratch directory's copy. hostPath volumes map to
the host path itself; emptyDir to a fresh directory. ``projected`` and ``downwardAPI`` volumes
(the ServiceAccount token, CA and namespace) come from ``projected.py``; libraries read those
by fixed paths, so a container mounting one runs in a private mount namespace where the copy
is bind-mounted at its mountPath. Every container gets ``KUBERNETES_SERVICE_HOST/PORT``.

The runner records what happened (started, exit codes, why it is waiting) and calls
``on_change``; turning that into a pod status for the API is the kubelet's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.k8s.kubeclient import Kube, KubeError

from . import projected
from .api import LOCAL_IP, NODE_IP, POD_NETNS, now

log = logging.getLogger("kubelet")

# -- processes ---------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:
    """In the child: die with the kubelet (PR_SET_PDEATHSIG = SIGKILL)."""
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def kill_group(pid: int, sig: int) -> None:
    """Signal a container's process group, which may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# A real kubelet's words for a container it can no longer find.
LOST_MESSAGE = "The container could not be located when the pod was terminated"

# Test-only registry: images under it "cannot be pulled" (every other image is ignored).
UNPULLABLE = "unpullable.invalid/"


class PodRunner:
    """One pod: its files, its processes, their exits (see module docstring)."""

    def __init__(
        self,
        pod: dict,
        root: Path,
        kube: Kube,
        *,
        start_delay: float,
        keep_files: bool,
        pgids: set[int],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.key = f"{self.ns}/{self.name}"
        self.dir = root / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.kube = kube  # the node's credentials: the Node authorizer decides what it may read
        self.start_delay = start_delay
        self.keep_files = keep_files
        self.pgids = pgids  # every container process group of the kubelet, for its shutdown
        self.on_change = on_change
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.started_at: dict[str, str] = {}
        self.exits: dict[str, tuple[int, str, str]] = {}  # container -> (code, finished, msg)
        self.lost: set[str] = set()  # containers that died with an earlier kubelet process
        self.waiting = ("ContainerCreating", "")
        self.start_time = now()
        self.stopping = False
        self.task: asyncio.Future | None = None
        self.volumes: dict[str, str] = {}  # volume name -> local directory
        self.fixed_path_volumes: set[str] = set()  # read by fixed paths: bind-mounted

    def start(self) -> None:
        """Start running the pod (in the background)."""
        self.task = asyncio.ensure_future(self.run())

    # -- files and environment -------------------------------------------------------------
    async def _get(self, kind: str, name: str, optional: bool = False) -> dict | None:
        """A Secret/ConfigMap, waiting while it does not exist (or the authorizer lags)."""
        path = f"/api/v1/namespaces/{self.ns}/{kind}/{name}"
        delay = 0.2
        while True:
            try:
                return await self.kube.get(path)
            except KubeError as exc:
                if exc.status == 404 and optional:
                    return None
                if exc.status not in (403, 404) and exc.status < 500:
                    raise
                self.waiting = ("ContainerCreating", f"{kind[:-1]} {name!r}: {exc.status}")
                self.on_change()
            except (TimeoutError, OSError) as exc:
                self.waiting = ("ContainerCreating", f"{kind[:-1]} {name!r}: {exc!r}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3)

    @staticmethod
    def _data(obj: dict) -> dict[str, bytes]:
        return projected.object_data(obj)

    def _write(self, directory: Path, data: dict[str, bytes], items, mode: int) -> None:
        chosen = items or [{"key": k, "path": k} for k in data]
        files = {}
        for item in chosen:
            if item["key"] not in data:
                raise RuntimeError(f"key {item['key']!r} not found in {directory.name}")
            files[item["path"]] = (data[item["key"]], item.get("mode", mode))
        projected.write_files(directory, files)

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
            elif "projected" in vol or "downwardAPI" in vol:
                files = await projected.volume_files(self.pod, vol, self.kube, self._get)
                projected.write_files(target, files)
                self.fixed_path_volumes.add(name)
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
        self.volumes = volumes
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
        """A container path under a mountPath, as the path of the local copy."""
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
        """A container's ``env``, resolved in order (later entries may use ``$(EARLIER)``)."""
        meta, spec = self.pod["metadata"], self.pod.get("spec") or {}
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": LOCAL_IP,
            "status.hostIP": NODE_IP,
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
        """Write the pod's files, start its containers and wait for them all to exit."""
        try:
            if self.lost_to_an_earlier_kubelet():
                return
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.on_change()
            await self.fail_unpullable_images()
            if self.start_delay:  # what an image pull would take
                await asyncio.sleep(self.start_delay)
            mounts = await self.materialise()
            for c in (self.pod.get("spec") or {}).get("containers") or []:
                if self.stopping:
                    return
                await self.start_container(c, mounts)
            self.on_change()
            await asyncio.gather(*(self.wait_container(n) for n in list(self.procs)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: cannot start", self.key)
            self.waiting = ("CreateContainerConfigError", str(exc)[:500])
            self.on_change()

    def lost_to_an_earlier_kubelet(self) -> bool:
        """Containers an earlier process of this kubelet started died with it (PDEATHSIG).

        Pods never restart here (no restart policies), so, as a kubelet that cannot locate a
        started container, report each exited with 137 and ``ContainerStatusUnknown``.
        """
        containers = (self.pod.get("spec") or {}).get("containers") or []
        started = [c["name"] for c in containers if (self.dir / f"{c['name']}.log").exists()]
        if not started:
            return False
        for name in started:
            self.lost.add(name)
            self.exits[name] = (137, now(), LOST_MESSAGE)
        for c in containers:  # never started: lost with the pod all the same
            self.exits.setdefault(c["name"], (137, now(), LOST_MESSAGE))
            self.lost.add(c["name"])
        log.info("%s: its containers died with an earlier kubelet process; failed", self.key)
        self.on_change()
        return True

    async def fail_unpullable_images(self) -> None:
        """A container image under ``UNPULLABLE`` cannot be pulled: ``ErrImagePull``, then
        ``ImagePullBackOff``, for as long as the pod exists (as a kubelet retrying)."""
        for c in (self.pod.get("spec") or {}).get("containers") or []:
            image = c.get("image") or ""
            if not image.startswith(UNPULLABLE):
                continue
            pull = f'failed to pull and unpack image "{image}": {image.split("/", 1)[0]}: not found'
            self.waiting = ("ErrImagePull", pull)
            self.on_change()
            await asyncio.sleep(1)
            self.waiting = ("ImagePullBackOff", f'Back-off pulling image "{image}"')
            self.on_change()
            await asyncio.Event().wait()  # until the pod is deleted (the task is cancelled)

    async def start_container(self, c: dict, mounts: Mapping[str, str]) -> None:
        """Start one container's command in its own session, its output to its log."""
        command = list(c.get("command") or []) + list(c.get("args") or [])
        if not command:
            raise RuntimeError("the process kubelet needs an explicit command (it ignores images)")
        env = await self.container_env(c, mounts)
        command = [self.map_path(self.expand(a, env), mounts) for a in command]
        binds = projected.bind_mounts(c, self.volumes, self.fixed_path_volumes)
        if binds:
            command = projected.in_mount_namespace(command, binds, self.dir / "mnt")
        if POD_NETNS:
            command = ["ip", "netns", "exec", POD_NETNS, *command]
        cwd = self.map_path(c.get("workingDir") or "", mounts) or str(self.dir)
        base = {
            "PATH": os.pathsep.join(
                [os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]
            ),
            "HOME": str(self.dir),
            "LANG": "C.UTF-8",
            "HOSTNAME": self.name,
            **projected.api_server_env(self.kube.host),
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
        self.pgids.add(proc.pid)
        log.info("%s: started %s as pid %d: %s", self.key, c["name"], proc.pid, command)

    async def wait_container(self, name: str) -> None:
        """Record a container's exit (code, time, log tail) and kill what it left behind."""
        proc = self.procs[name]
        code = await proc.wait()
        self.pgids.discard(proc.pid)
        kill_group(proc.pid, signal.SIGKILL)  # whatever it left behind in its group
        c = next(c for c in self.pod["spec"]["containers"] if c["name"] == name)
        msg = ""
        if code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            msg = self.log_tail(name)
        self.exits[name] = (code if code >= 0 else 128 - code, now(), msg)
        log.info("%s: container %s exited with %s", self.key, name, code)
        self.on_change()

    def log_tail(self, name: str, lines: int = 80, limit: int = 2048) -> str:
        """The end of a container's log (a terminated container's message)."""
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
        if self.task is not None:
            if not self.task.done():
                self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def cleanup_files(self) -> None:
        """Remove the volume files (Secrets) once the pod is gone, unless told to keep them."""
        if not self.keep_files:
            shutil.rmtree(self.dir / "volumes", ignore_errors=True)
