"""The Kubernetes world of benchmarks/chaos.py (``--with kubernetes``).

A local control plane (tests/k8s: real etcd, kube-apiserver, kube-controller-manager), one
namespace with deploy/rbac.yaml, and the process kubelet (tests/fakes/kubernetes) running
that namespace's pods as local processes. The gateway runs every scheduler as a pod (a pod
worker pool needs its scheduler in Kubernetes) and has a worker pool "pods".

Faults:

- ``apiserver-kill``: SIGKILL of kube-apiserver, restarted on the same port after 0-5 s
  (etcd and the controller manager keep running);
- ``kubelet-kill``: SIGKILL of the process kubelet, restarted on the same Node after 0-5 s.
  A real kubelet's containers outlive it and are re-adopted by the next one; the process
  kubelet's die with it (PR_SET_PDEATHSIG), so this is a node crash: the restarted kubelet
  reports every pod whose containers had started as Failed (exit code 137,
  ``ContainerStatusUnknown``), never runs it again, and the gateway must fail or replace
  what ran there;
- ``apiserver-pause`` / ``kubelet-pause``: SIGSTOP of kube-apiserver or of the process
  kubelet for 2-8 s, then SIGCONT (a hung process: connections hang instead of failing;
  a paused kubelet's containers keep running, it only stops reporting and starting pods).

The truth is the API server's pods of this gateway that are not Succeeded or Failed, and
the processes in the kubelet's pod directories (one of a pod that is gone or ended is a
stray).
"""

from __future__ import annotations

import contextlib
import random
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.chaos_world import Seen, fault_window, pause, resume

REPO = Path(__file__).resolve().parents[1]
KINDS = ("apiserver-kill", "kubelet-kill", "apiserver-pause", "kubelet-pause")
POOL = "pods"
CAP = 3
TERMINAL = ("Succeeded", "Failed")


class World:
    """Control plane, namespace and process kubelet, started and stopped as one."""

    pool = POOL
    cap = CAP
    kinds = KINDS

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root / "kubernetes"
        self.rng = rng
        self.gateway_id = f"chaos-{uuid.uuid4().hex[:6]}"
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> World:
        sys.path.insert(0, str(REPO / "tests" / "k8s"))
        from harness import KubeEnv, ProcessKubelet, TestNamespace

        self.root.mkdir(mode=0o700)
        print("kubernetes: starting the control plane (a minute or two)", flush=True)
        try:
            self.env = KubeEnv().start()
            self._stack.callback(self.env.stop)
            self.ns = TestNamespace(self.env, self.root).create()
            self._stack.callback(self.ns.delete)
            self.kubelet = ProcessKubelet(self.env, self.ns.name, self.root, cpu="16")
            self._stack.callback(self.kubelet.stop)
            self.kubelet.start()
            self.kubeconfig = self.ns.gateway_kubeconfig()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def config(self) -> str:
        """Schedulers as pods, the capped pool "pods"; fast periods, as the e2e tests use."""
        return f"""
c.ElasticBackend.scheduler_launcher = "kubernetes"
c.ElasticBackend.worker_pools[{POOL!r}] = {{"launcher": "kubernetes", "max_workers": {CAP}}}
c.ElasticBackend.cluster_start_timeout = 120
c.KubernetesLauncher.kubeconfig = {self.kubeconfig!r}
c.KubernetesLauncher.namespace = {self.ns.name!r}
c.KubernetesLauncher.gateway_id = {self.gateway_id!r}
c.KubernetesLauncher.termination_grace_period = 5
c.KubernetesLauncher.reconcile_period = 2
c.KubernetesLauncher.request_timeout = 5
c.KubernetesLauncher.api_retry_timeout = 5
c.KubernetesLauncher.watch_backoff_max = 2
c.KubernetesLauncher.startup_sync_timeout = 10
# Every pod shares this machine's network: each scheduler picks free ports.
c.KubernetesLauncher.scheduler_port = 0
c.KubernetesLauncher.dashboard_port = 0
c.KubernetesLauncher.api_port = 0
c.KubernetesLauncher.image = "ignored-by-the-process-kubelet"
"""

    def inject(self, kind: str, during: Callable[[], None]) -> dict[str, Any]:
        """Kill (then restart) or pause (then resume) kube-apiserver or the process kubelet,
        ``during()`` while it is away."""
        if kind in ("apiserver-pause", "kubelet-pause"):
            pid = (
                self.env.cp.apiserver_pid() if kind == "apiserver-pause" else self.kubelet.proc.pid
            )
            stalled = self.rng.uniform(2, 8)
            fault_window(stalled, lambda: pause(pid), lambda: resume(pid), during)
            return {"stalled s": round(stalled, 1)}
        down = self.rng.uniform(0, 5)
        if kind == "apiserver-kill":
            fault_window(down, self.env.cp.kill_apiserver, self.env.cp.start_apiserver, during)
        elif kind == "kubelet-kill":
            pods = len(self.kubelet.processes())
            lost = sorted(self.live().schedulers)  # every scheduler runs on this one Node
            fault_window(down, self.kubelet.kill, self.kubelet.start, during)
            return {"down s": round(down, 1), "pod processes": pods, "lost": lost}
        else:
            raise ValueError(f"not a kubernetes fault kind: {kind}")
        return {"down s": round(down, 1)}

    def live(self) -> Seen:
        """Pods of this gateway not yet Succeeded/Failed; processes of no such pod (raises
        while the API server is away)."""
        pods = self.env.admin.items(f"/api/v1/namespaces/{self.ns.name}/pods")
        seen = Seen()
        live_dirs = set()
        for pod in pods:
            meta = pod["metadata"]
            if (pod.get("status") or {}).get("phase") in TERMINAL:
                continue
            live_dirs.add(f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}")
            labels = meta.get("labels") or {}
            if labels.get("gateway.dask.org/instance") != self.gateway_id:
                continue
            cluster = labels.get("gateway.dask.org/cluster", "?")
            component = labels.get("app.kubernetes.io/component")
            if component == "dask-scheduler":
                seen.schedulers.add(cluster)
            elif component == "dask-worker":
                seen.workers.add((cluster, labels.get("gateway.dask.org/worker", "?")))
        root = str(self.kubelet.root) + "/"
        for proc in self.kubelet.processes():
            with contextlib.suppress(Exception):
                pod_dir = proc.cwd().removeprefix(root).split("/", 1)[0]
                if pod_dir not in live_dirs:
                    seen.strays.append(f"pid {proc.pid} in pod directory {pod_dir}")
        return seen
