"""Unit tests of the API client: RBAC, retries, 403 messages, kubeconfig and namespace."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio.client import Configuration

from gateway_backend.launchers.base import LauncherUnavailable
from gateway_backend.launchers.kubernetes.client import (
    REQUIRED_PERMISSIONS,
    KubernetesAPIError,
    KubernetesForbidden,
    load_kube_config,
    request_json,
)

REPO = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("test")
REQUEST_TIMEOUT = 15.0


def call(verb: str, resource: str, method, *args, retry_for: float = 20.0):
    """``request_json`` as the launcher makes it, in namespace "analysis"."""
    return request_json(
        functools.partial(method, *args),
        verb=verb,
        resource=resource,
        namespace="analysis",
        request_timeout=REQUEST_TIMEOUT,
        retry_for=retry_for,
        log=LOG,
    )


def test_rbac_yaml_grants_exactly_what_the_launcher_uses():
    docs = list(yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs if d}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    granted: dict[str, set[str]] = {}
    for rule in kinds["Role"]["rules"]:
        assert rule["apiGroups"] == [""]
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted == {r: set(v) for r, v in REQUIRED_PERMISSIONS.items()}
    binding = kinds["RoleBinding"]
    assert binding["roleRef"]["name"] == kinds["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == kinds["ServiceAccount"]["metadata"]["name"]


class FakeResponse:
    def __init__(self, status: int, body: dict):
        self.status = status
        self._body = json.dumps(body).encode()

    async def read(self):
        return self._body

    def release(self):
        pass


def scripted(*answers):
    calls = []

    async def method(*args, **kwargs):
        calls.append(kwargs)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    method.calls = calls
    return method


async def test_5xx_and_timeouts_are_retried_then_succeed():
    method = scripted(
        FakeResponse(503, {"message": "etcd leader changed"}),
        TimeoutError(),
        FakeResponse(201, {"metadata": {"uid": "u"}}),
    )
    body = await call("create", "pods", method, "ns", {}, retry_for=5)
    assert body == {"metadata": {"uid": "u"}} and len(method.calls) == 3
    assert method.calls[0]["_request_timeout"] == REQUEST_TIMEOUT


async def test_persistent_outage_becomes_launcher_unavailable():
    method = scripted(ConnectionRefusedError("refused"))
    with pytest.raises(LauncherUnavailable, match="create pods in namespace 'analysis'"):
        await call("create", "pods", method, "ns", {}, retry_for=0.3)
    assert len(method.calls) >= 2


async def test_403_names_the_missing_permission_and_the_rbac_file():
    message = (
        'services is forbidden: User "system:serviceaccount:analysis:elastic-gateway" cannot '
        'create resource "services" in API group "" in the namespace "analysis"'
    )
    method = scripted(FakeResponse(403, {"kind": "Status", "message": message, "code": 403}))
    with pytest.raises(KubernetesForbidden) as err:
        await call("create", "services", method, "ns", {})
    text = str(err.value)
    assert "permission to create services in namespace 'analysis'" in text
    assert "deploy/rbac.yaml" in text and "cannot create resource" in text
    assert len(method.calls) == 1  # not retried


async def test_other_client_errors_are_not_retried():
    method = scripted(FakeResponse(404, {"message": 'pods "x" not found'}))
    with pytest.raises(KubernetesAPIError) as err:
        await call("delete", "pods", method, "x", "ns")
    assert err.value.status == 404 and len(method.calls) == 1


def write_kubeconfig(path: Path, namespace: str | None) -> str:
    context = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://k8s.example:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": context}],
                "current-context": "ctx",
            }
        )
    )
    return str(path)


async def test_namespace_comes_from_the_setting_or_the_kubeconfig_context(tmp_path):
    with_ns = write_kubeconfig(tmp_path / "a.json", "from-context")
    without = write_kubeconfig(tmp_path / "b.json", None)
    cfg = Configuration()
    assert await load_kube_config(cfg, kubeconfig=with_ns) == "from-context"
    assert cfg.host == "https://k8s.example:6443"
    assert await load_kube_config(Configuration(), kubeconfig=with_ns, namespace="mine") == "mine"
    assert await load_kube_config(cfg, kubeconfig=without) == "default"
    with pytest.raises(Exception, match="KubernetesLauncher cannot load its Kubernetes config"):
        await load_kube_config(cfg, kubeconfig=str(tmp_path / "missing"))
