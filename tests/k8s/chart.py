"""The Helm chart on the test control plane: render, server-side apply, reach a Service.

- ``render_chart``: Helm's own rendering (helm-python-sdk embeds Helm's Go SDK), cluster-aware,
  so the chart's ``lookup`` sees what the API server has;
- ``server_side_apply``: every object through ``PATCH application/apply-patch+yaml`` with a
  field manager and ``force``, as ``kubectl apply --server-side`` and Helm 4 do; the answers
  are the objects as the API server stored them;
- ``service_endpoint``: a Service port resolved the way kube-proxy does (selector, Ready pods,
  named ``targetPort`` to the container's port). kube-proxy reads EndpointSlices, but the
  EndpointSlice controller cannot publish the process kubelet's pod IP: 127.0.0.1 is refused
  by EndpointSlice validation (loopback), so the same rule is applied to the pods directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kubeclient import SyncKube

REPO = Path(__file__).resolve().parents[2]
#: Where the chart lives; ELASTIC_GATEWAY_CHART_DIR points the tests at another checkout.
CHART_DIR = Path(
    os.environ.get("ELASTIC_GATEWAY_CHART_DIR") or REPO / "deploy/helm/elastic-gateway"
)
FIELD_MANAGER = "elastic-gateway-tests"


def render_chart(
    kubeconfig: str,
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    *,
    is_install: bool = True,
) -> list[dict]:
    """The chart's manifests for ``values`` (an install, else an upgrade), as parsed objects."""
    import helm_python as helm

    with (
        helm.Chart.load(CHART_DIR) as chart,
        helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as config,
    ):
        rendered = config.render(
            chart,
            dict(values),
            name=release,
            namespace=namespace,
            is_install=is_install,
            is_upgrade=not is_install,
        )
    docs = []
    for path in sorted(rendered):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(rendered[path]) if d]
    return docs


class Resources:
    """Where objects of a kind live in the API (from discovery, as kubectl finds them)."""

    def __init__(self, admin: SyncKube) -> None:
        self.admin = admin
        self.known: dict[str, list[dict]] = {}

    def path(self, obj: Mapping[str, Any], namespace: str) -> str:
        """The URL path of ``obj`` (by its apiVersion, kind and name)."""
        version = obj["apiVersion"]
        base = "/api/v1" if version == "v1" else f"/apis/{version}"
        if base not in self.known:
            self.known[base] = self.admin.get(base)["resources"]
        for res in self.known[base]:
            if res["kind"] == obj["kind"] and "/" not in res["name"]:
                where = f"{base}/namespaces/{namespace}" if res["namespaced"] else base
                return f"{where}/{res['name']}/{obj['metadata']['name']}"
        raise LookupError(f"the API server serves no {obj['kind']} in {version}")


def server_side_apply(admin: SyncKube, docs: list[dict], namespace: str) -> list[dict]:
    """Apply every object (no dry run); returns what the API server stored."""
    resources = Resources(admin)
    stored = []
    for doc in docs:
        _, answer = admin.request(
            "PATCH",
            resources.path(doc, namespace),
            {"fieldManager": FIELD_MANAGER, "force": "true"},
            doc,
            content_type="application/apply-patch+yaml",
        )
        stored.append(answer)
    return stored


def is_ready(pod: Mapping[str, Any]) -> bool:
    """A pod kube-proxy would send traffic to: Ready, not terminating."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def service_endpoint(
    admin: SyncKube, namespace: str, service: str, port_name: str
) -> tuple[str, int] | None:
    """(pod IP, container port) behind a Service's named port, or None with no Ready pod."""
    svc = admin.get(f"/api/v1/namespaces/{namespace}/services/{service}")
    port = next(p for p in svc["spec"]["ports"] if p.get("name") == port_name)
    target = port.get("targetPort", port["port"])
    selector = ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items())
    pods = admin.items(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)
    for pod in filter(is_ready, pods):
        if isinstance(target, int):
            return pod["status"]["podIP"], target
        for container in pod["spec"]["containers"]:
            for cp in container.get("ports") or []:
                if cp.get("name") == target:
                    return pod["status"]["podIP"], cp["containerPort"]
    return None
