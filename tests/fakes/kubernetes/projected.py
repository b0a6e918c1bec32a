"""What a kubelet gives in-cluster clients: projected volumes, the API server's address, and
the fixed paths their libraries read.

ServiceAccount admission gives every pod that does not opt out
(``automountServiceAccountToken: false``) a ``kube-api-access-*`` projected volume at
``/var/run/secrets/kubernetes.io/serviceaccount``: a ``serviceAccountToken`` (asked for with a
TokenRequest as the node, bound to the pod, so NodeRestriction checks it), the
``kube-root-ca.crt`` ConfigMap that kube-controller-manager publishes (``--root-ca-file``) and
``metadata.namespace`` through the downward API. ``volume_files`` turns such a volume (any
``projected`` or ``downwardAPI`` volume) into files.

Client libraries read that directory by its fixed path (kubernetes-asyncio's
``load_incluster_config``), which the runner's path mapping cannot rewrite. So a container
that mounts such a volume runs in a private mount namespace (``unshare``, root only) where
``mountns.py`` bind-mounts the pod's copy at the mountPath; nothing is created on the host.

``api_server_env`` is the ``KUBERNETES_SERVICE_*`` environment a kubelet sets. A kubelet names
the ``kubernetes`` Service's cluster IP there and kube-proxy translates it; there is no
kube-proxy here, so it names what that translation leads to: the API server's own address.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.k8s.kubeclient import Kube

#: Where ServiceAccount admission mounts the token, CA and namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MOUNTNS = Path(__file__).resolve().with_name("mountns.py")

#: ``(kind, name, optional) -> object or None``: the runner's wait-while-missing reader.
GetObject = Callable[[str, str, bool], Awaitable[dict | None]]
#: relative path -> (content, mode)
Files = dict[str, tuple[bytes, int]]


def object_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's or ConfigMap's keys as bytes."""
    if obj.get("kind") == "Secret" or "type" in obj:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def downward_value(pod: Mapping[str, Any], field_path: str) -> str:
    """A downward API ``fieldRef`` (labels/annotations as the kubelet formats them)."""
    meta = pod["metadata"]
    if field_path in ("metadata.labels", "metadata.annotations"):
        pairs = sorted((meta.get(field_path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in pairs)
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "default"),
    }
    if field_path not in simple:
        raise RuntimeError(f"downwardAPI fieldRef {field_path!r} is not supported here")
    return simple[field_path]


async def service_account_token(kube: Kube, pod: Mapping[str, Any], source: Mapping) -> bytes:
    """A token for the pod's ServiceAccount, bound to the pod (TokenRequest as the node)."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    sa = spec.get("serviceAccountName") or "default"
    request: dict[str, Any] = {
        "expirationSeconds": int(source.get("expirationSeconds") or 3600),
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "uid": meta["uid"],
        },
    }
    if source.get("audience"):
        request["audiences"] = [source["audience"]]
    _, answer = await kube.request(
        "POST",
        f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": request},
    )
    return answer["status"]["token"].encode()


def _pick(data: Mapping[str, bytes], items, mode: int, what: str) -> Files:
    chosen = items or [{"key": k, "path": k} for k in data]
    out: Files = {}
    for item in chosen:
        if item["key"] not in data:
            raise RuntimeError(f"key {item['key']!r} not found in {what}")
        out[item["path"]] = (data[item["key"]], item.get("mode", mode))
    return out


async def volume_files(
    pod: Mapping[str, Any], volume: Mapping[str, Any], kube: Kube, get: GetObject
) -> Files:
    """The files of a ``projected`` or ``downwardAPI`` volume."""
    if "downwardAPI" in volume:
        spec = volume["downwardAPI"]
        sources = [{"downwardAPI": spec}]
    else:
        spec = volume["projected"]
        sources = spec.get("sources") or []
    mode = spec.get("defaultMode", 0o644)
    files: Files = {}
    for src in sources:
        if "serviceAccountToken" in src:
            sat = src["serviceAccountToken"]
            files[sat["path"]] = (await service_account_token(kube, pod, sat), mode)
        elif "configMap" in src or "secret" in src:
            kind = "configmaps" if "configMap" in src else "secrets"
            ref = src.get("configMap") or src.get("secret")
            obj = await get(kind, ref["name"], ref.get("optional", False))
            data = object_data(obj) if obj else {}
            files.update(_pick(data, ref.get("items"), mode, f"{kind[:-1]} {ref['name']}"))
        elif "downwardAPI" in src:
            for item in src["downwardAPI"].get("items") or []:
                if "fieldRef" not in item:
                    raise RuntimeError(f"downwardAPI item {item['path']!r}: only fieldRef here")
                value = downward_value(pod, item["fieldRef"]["fieldPath"])
                files[item["path"]] = (value.encode(), item.get("mode", mode))
        else:
            raise RuntimeError(f"projected source {sorted(src)} is not supported here")
    return files


def write_files(directory: Path, files: Files) -> None:
    """Write ``files`` under ``directory`` (0700), each created 0600 then given its mode."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for rel, (content, mode) in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(path, mode)


def api_server_env(server_url: str) -> dict[str, str]:
    """The ``KUBERNETES_SERVICE_*``/``KUBERNETES_PORT*`` variables every container gets."""
    url = urlsplit(server_url)
    host, port = url.hostname or "127.0.0.1", str(url.port or 443)
    addr = f"[{host}]" if ":" in host else host
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{addr}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{addr}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def bind_mounts(
    container: Mapping[str, Any], local: Mapping[str, str], fixed: set[str]
) -> list[tuple[str, str, bool]]:
    """(local dir, mountPath, read-only) for the container's mounts of ``fixed`` volumes."""
    out = []
    for m in container.get("volumeMounts") or []:
        if m["name"] in fixed and m["name"] in local:
            sub = m.get("subPath")
            src = os.path.join(local[m["name"]], sub) if sub else local[m["name"]]
            out.append((src, m["mountPath"], bool(m.get("readOnly"))))
    return out


def in_mount_namespace(
    command: list[str], binds: list[tuple[str, str, bool]], stash: Path
) -> list[str]:
    """``command`` run in a private mount namespace that has ``binds`` (needs root)."""
    if os.geteuid() != 0:
        where = ", ".join(dst for _, dst, _ in binds)
        raise RuntimeError(
            f"mounting volumes at {where} needs a private mount namespace, which the process "
            "kubelet can only make as root; run it as root or set "
            "automountServiceAccountToken: false on the pod"
        )
    args = ["--stash", str(stash)]
    for src, dst, ro in binds:
        args += ["--bind", src, dst, "ro" if ro else "rw"]
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        sys.executable,
        str(MOUNTNS),
        *args,
        "--",
        *command,
    ]
