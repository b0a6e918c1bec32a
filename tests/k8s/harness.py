"""Test-side plumbing for the Kubernetes end-to-end tests.

- ``KubeEnv``: the cluster under test — the local ``ControlPlane`` (started once per session) or,
  when ``ELASTIC_GATEWAY_TEST_KUBECONFIG`` is set, a real cluster (nothing is started then);
- ``TestNamespace``: a fresh namespace with deploy/rbac.yaml applied in it (optionally minus one
  verb) and a kubeconfig holding a token of the ServiceAccount it ships, so the gateway runs with
  exactly that RBAC;
- ``ProcessKubelet``: the process kubelet (``tests/fakes/kubernetes``) as a child process with
  its own Node, stopped with everything it started;
- ``CuttableProxy``: a TCP forwarder in front of the API server whose connections a test can cut
  (and refuse for a while).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import yaml

from gateway_backend.embedded import processes_in, write_private_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RBAC_FILE = REPO / "deploy" / "rbac.yaml"
sys.path.insert(0, str(HERE))

from kubeclient import KubeError, SyncKube  # noqa: E402

REAL_KUBECONFIG = os.environ.get("ELASTIC_GATEWAY_TEST_KUBECONFIG", "")


class KubeEnv:
    """The cluster the tests use, with an admin client for setting up and checking."""

    def __init__(self) -> None:
        self.cp = None
        self.local = not REAL_KUBECONFIG

    def start(self) -> KubeEnv:
        if self.local:
            from controlplane import ControlPlane

            # Stricter than the defaults in two ways real clusters can be: owner references
            # with blockOwnerDeletion need pods/finalizers (as on OpenShift), and pod watches
            # go straight to etcd so a compacted resourceVersion really answers 410 Gone.
            self.cp = ControlPlane(
                apiserver_args=[
                    "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                    "--watch-cache-sizes=pods#0",
                ]
            ).start()
            self.admin_kubeconfig = self.cp.admin_kubeconfig
        else:
            self.admin_kubeconfig = REAL_KUBECONFIG
        self.admin = SyncKube(self.admin_kubeconfig)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.admin.close()
        if self.cp is not None:
            self.cp.stop()

    def cluster_entry(self) -> dict[str, Any]:
        """The admin kubeconfig's cluster (server, CA) of its current context."""
        cfg = yaml.safe_load(Path(self.admin_kubeconfig).read_text())
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        cluster = dict(cluster)
        ca = cluster.pop("certificate-authority", None)
        if ca:
            base = Path(self.admin_kubeconfig).parent
            cluster["certificate-authority-data"] = base64.b64encode(
                (base / ca).read_bytes()
            ).decode()
        return cluster

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision (local only): older watches get 410 Gone."""
        import urllib.request

        assert self.cp is not None

        def post(path: str, body: dict) -> dict:
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.cp.etcd_port}{path}",
                data=json.dumps(body).encode(),
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        revision = int(post("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision


def rbac_documents(namespace: str, drop: tuple[str, str] | None = None) -> list[dict]:
    """deploy/rbac.yaml for ``namespace``; ``drop=(resource, verb)`` removes one permission."""
    docs = [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d]
    out = []
    for doc in copy.deepcopy(docs):
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects") or []:
            subject["namespace"] = namespace
        if doc["kind"] == "Role" and drop is not None:
            resource, verb = drop
            rules = []
            for rule in doc["rules"]:
                if resource in rule["resources"] and verb in rule["verbs"]:
                    others = [r for r in rule["resources"] if r != resource]
                    if others:
                        rules.append({**rule, "resources": others})
                    verbs = [v for v in rule["verbs"] if v != verb]
                    if verbs:
                        rules.append({**rule, "resources": [resource], "verbs": verbs})
                else:
                    rules.append(rule)
            doc["rules"] = rules
        out.append(doc)
    return out


API_PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


class TestNamespace:
    """A namespace for one test, with the gateway's RBAC from deploy/rbac.yaml."""

    __test__ = False  # not a pytest class

    def __init__(self, env: KubeEnv, tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.name = f"eg-{uuid.uuid4().hex[:10]}"
        self.admin = env.admin

    def create(self, drop: tuple[str, str] | None = None) -> TestNamespace:
        """Create the namespace and its RBAC; on any failure delete what was made."""
        self.admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": self.name}})
        try:
            self.rbac = rbac_documents(self.name, drop)
            for doc in self.rbac:
                self.admin.request("POST", API_PATHS[doc["kind"]].format(ns=self.name), body=doc)
            self.service_account = next(d for d in self.rbac if d["kind"] == "ServiceAccount")
            # Pods need the namespace's `default` ServiceAccount (the admission plugin checks).
            self.wait_for(f"/api/v1/namespaces/{self.name}/serviceaccounts/default")
        except BaseException:
            self.delete()
            raise
        return self

    def wait_for(self, path: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.admin.get(path)
            except KubeError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def gateway_kubeconfig(self, server: str | None = None, name: str = "gateway") -> str:
        """A kubeconfig with a token of deploy/rbac.yaml's ServiceAccount (TokenRequest)."""
        sa = self.service_account["metadata"]["name"]
        _, answer = self.admin.request(
            "POST",
            f"/api/v1/namespaces/{self.name}/serviceaccounts/{sa}/token",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 7200},
            },
        )
        cluster = self.env.cluster_entry()
        if server:
            cluster["server"] = server
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": sa, "user": {"token": answer["status"]["token"]}}],
            "contexts": [
                {"name": "test", "context": {"cluster": "test", "user": sa, "namespace": self.name}}
            ],
            "current-context": "test",
        }
        path = self.tmp / f"{name}.kubeconfig"
        write_private_json(path, cfg)
        return str(path)

    def objects(self, kind: str, **labels: str) -> list[dict]:
        query = {}
        if labels:
            query["labelSelector"] = ",".join(f"{k}={v}" for k, v in labels.items())
        return self.admin.items(f"/api/v1/namespaces/{self.name}/{kind}", **query)

    def names(self, kind: str, **labels: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.objects(kind, **labels)}

    def delete(self) -> None:
        with contextlib.suppress(Exception):
            self.admin.request("DELETE", f"/api/v1/namespaces/{self.name}", ok=(404,))


class ProcessKubelet:
    """The process kubelet (tests/fakes/kubernetes) as a child process: one namespace, one Node."""

    def __init__(
        self,
        env: KubeEnv,
        namespace: str,
        tmp: Path,
        *,
        cpu: str = "16",
        memory: str = "64Gi",
        max_pods: int = 50,
        start_delay: float = 0.0,
        pod_network: tuple[str, str] | None = None,
    ) -> None:
        """``pod_network``: (network namespace, its address) the pods run in."""
        assert env.cp is not None, "the process kubelet needs the local control plane"
        self.pod_env = {}
        if pod_network is not None:
            netns, ip = pod_network
            self.pod_env = {"PROCESS_KUBELET_POD_NETNS": netns, "PROCESS_KUBELET_POD_IP": ip}
        self.env = env
        self.namespace = namespace
        self.node = f"eg-node-{uuid.uuid4().hex[:8]}"
        self.root = (tmp / "kubelet").resolve()
        self.log_path = tmp / "kubelet.log"
        self.args = ["--cpu", cpu, "--memory", memory, "--max-pods", str(max_pods)]
        self.args += ["--start-delay", str(start_delay)]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ProcessKubelet:
        cp = self.env.cp
        self.root.mkdir(parents=True, exist_ok=True)
        ready = self.root.parent / f"{self.node}.ready"
        ready.unlink(missing_ok=True)  # a restart: the earlier process's file says nothing
        node_cfg = cp.kubeconfig_for(f"system:node:{self.node}", ["system:nodes"])
        sched_cfg = cp.kubeconfig_for("system:kube-scheduler")
        cmd = [
            sys.executable,
            str(REPO / "tests" / "fakes" / "kubernetes"),
            "--node",
            self.node,
            "--node-kubeconfig",
            node_cfg,
            "--scheduler-kubeconfig",
            sched_cfg,
            "--namespace",
            self.namespace,
            "--root",
            str(self.root),
            "--ready-file",
            str(ready),
            *self.args,
        ]
        from controlplane import child_preexec

        with open(self.log_path, "ab") as log:
            # Own session, and killed with this process if it dies without stopping us.
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec(),
                env={**os.environ, **self.pod_env},
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"process kubelet did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def processes(self) -> list[psutil.Process]:
        """Processes running in this kubelet's pod directories (its containers)."""
        return processes_in(self.root)

    def kill(self) -> None:
        """SIGKILL the kubelet process only (a crash); its containers die with it (PDEATHSIG).

        ``start()`` again runs a new one on the same Node and root: pods whose containers had
        started are reported Failed (``ContainerStatusUnknown``), never run a second time.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        """Stop the kubelet and every container process; returns how many had to be killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        leftovers = self.processes()
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(leftovers, timeout=10)
        with contextlib.suppress(Exception):
            self.env.admin.request("DELETE", f"/api/v1/nodes/{self.node}", ok=(404,))
        return len(leftovers)


class CuttableProxy:
    """A TCP forwarder to ``target`` (host, port) whose connections can be cut on demand."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.refusing = False
        self.connections: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        ).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.connections.difference_update((writer, up_writer))

    def _cut(self) -> int:
        n = len(self.connections) // 2
        for w in list(self.connections):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self.connections.clear()
        return n

    def cut(self, refuse: bool = False) -> int:
        """Abort every open connection (RST); with ``refuse``, also refuse new ones."""
        self.refusing = refuse
        return asyncio.run_coroutine_threadsafe(self._run(self._cut), self.loop).result(10)

    def allow(self) -> None:
        self.refusing = False

    async def _run(self, fn, *args: Iterable[Any]) -> Any:
        return fn(*args)

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            self._cut()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
