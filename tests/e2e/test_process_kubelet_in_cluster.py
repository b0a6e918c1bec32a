"""The process kubelet gives pods what a kubelet gives in-cluster clients.

A ServiceAccount token bound to the pod (TokenRequest as the node), the cluster CA from the
``kube-root-ca.crt`` ConfigMap, the namespace from the downward API, all at the fixed path
``/var/run/secrets/kubernetes.io/serviceaccount`` (bind-mounted in a private mount namespace)
and ``KUBERNETES_SERVICE_HOST/PORT``: so an unmodified ``load_incluster_config`` works in a
pod, with the RBAC of the pod's ServiceAccount.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest

from ..conftest import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
from harness import REAL_KUBECONFIG, KubeEnv, ProcessKubelet, TestNamespace

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.k8s,
    pytest.mark.skipif(bool(REAL_KUBECONFIG), reason="tests the local process kubelet"),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="fixed-path mounts need a private mount namespace (root)"
    ),
]

RBAC = "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"

# Run in the pod: in-cluster config exactly as a controller would load it, then list pods.
LIST_PODS = """
import asyncio, json, os
from kubernetes_asyncio import client, config

async def main():
    config.load_incluster_config()
    ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
    async with client.ApiClient() as api:
        pods = await client.CoreV1Api(api).list_namespaced_pod(ns)
    print(json.dumps({"namespace": ns, "pods": sorted(p.metadata.name for p in pods.items)}))

asyncio.run(main())
"""

# Run in the pod: whether there is a token, and whether in-cluster config loads without one.
NO_TOKEN = """
import json, os
from kubernetes_asyncio import config
try:
    config.load_incluster_config()
    loaded = "loaded"
except config.ConfigException as exc:
    loaded = str(exc)
token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
print(json.dumps({"token_exists": os.path.exists(token), "incluster": loaded}))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The control plane, a namespace and a process kubelet for this module's pods."""
    tmp = tmp_path_factory.mktemp("incluster")
    env = KubeEnv().start()
    ns = kubelet = None
    try:
        ns = TestNamespace(env, tmp).create()
        kubelet = ProcessKubelet(env, ns.name, tmp).start()
        yield env, ns, kubelet
    finally:
        if kubelet is not None:
            kubelet.stop()
        if ns is not None:
            ns.delete()
        env.stop()


def pod_reader(env: KubeEnv, ns: str, name: str) -> None:
    """A ServiceAccount ``name`` allowed to list pods in ``ns`` (and nothing else)."""
    env.admin.request(
        "POST", f"/api/v1/namespaces/{ns}/serviceaccounts", body={"metadata": {"name": name}}
    )
    role = {"metadata": {"name": name}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}
    ]}  # fmt: skip
    env.admin.request("POST", RBAC.format(ns=ns) + "/roles", body=role)
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }
    env.admin.request("POST", RBAC.format(ns=ns) + "/rolebindings", body=binding)


def run_pod(env: KubeEnv, ns: str, kubelet: ProcessKubelet, spec: dict, name: str) -> dict:
    """Create a pod, wait for it to end; returns its JSON output line and its API object."""
    pod = {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", **spec}}
    api = f"/api/v1/namespaces/{ns}/pods"
    env.admin.request("POST", api, body=pod)

    def ended():
        obj = env.admin.get(f"{api}/{name}")
        return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    obj = wait_for(ended, timeout=60, what=f"pod {name} to end")
    [log] = kubelet.root.glob(f"{ns}_{name}_*/c.log")
    text = log.read_text()
    assert obj["status"]["phase"] == "Succeeded", text
    return {"out": json.loads(text.strip().splitlines()[-1]), "pod": obj}


def python(script: str, **extra) -> dict:
    return {"name": "c", "image": "ignored", "command": [sys.executable, "-c", script], **extra}


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_load_incluster_config_in_a_pod_lists_pods_with_its_service_accounts_rbac(cluster):
    env, ns, kubelet = cluster
    pod_reader(env, ns.name, "reader")
    spec = {"serviceAccountName": "reader", "containers": [python(LIST_PODS)]}
    result = run_pod(env, ns.name, kubelet, spec, "lister")
    assert result["out"] == {"namespace": ns.name, "pods": ["lister"]}
    # ServiceAccount admission injected the volume the kubelet filled (not the test).
    volumes = [v["name"] for v in result["pod"]["spec"]["volumes"]]
    assert [v for v in volumes if v.startswith("kube-api-access-")], volumes


def test_a_projected_token_has_its_audience_and_expiration_and_is_bound_to_the_pod(cluster):
    env, ns, kubelet = cluster
    script = "import json; print(json.dumps(open('/var/run/secrets/tokens/vault').read()))"
    volume = {
        "name": "vault-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "path": "vault",
                        "audience": "vault.example",
                        "expirationSeconds": 1200,
                    }
                }
            ]
        },
    }
    mount = {"name": "vault-token", "mountPath": "/var/run/secrets/tokens", "readOnly": True}
    spec = {
        "automountServiceAccountToken": False,
        "volumes": [volume],
        "containers": [python(script, volumeMounts=[mount])],
    }
    result = run_pod(env, ns.name, kubelet, spec, "audience")
    claims = jwt_claims(result["out"])
    assert claims["aud"] == ["vault.example"]
    assert claims["exp"] - claims["iat"] == 1200
    bound = claims["kubernetes.io"]
    assert bound["pod"] == {"name": "audience", "uid": result["pod"]["metadata"]["uid"]}
    assert bound["serviceaccount"]["name"] == "default"


def test_fixed_path_mounts_create_nothing_on_the_host(cluster):
    env, ns, kubelet = cluster
    if os.path.lexists("/run/secrets"):
        pytest.skip("/run/secrets exists on this host: nothing to check")
    script = "import json, os; print(json.dumps(os.listdir('/run')))"  # the host's entries too
    result = run_pod(env, ns.name, kubelet, {"containers": [python(script)]}, "host-view")
    assert set(os.listdir("/run")) <= set(result["out"])
    assert "secrets" in result["out"]  # the pod saw the mount point made on its tmpfs
    assert not os.path.lexists("/run/secrets")


def test_a_pod_with_automount_false_has_no_token(cluster):
    env, ns, kubelet = cluster
    spec = {"automountServiceAccountToken": False, "containers": [python(NO_TOKEN)]}
    result = run_pod(env, ns.name, kubelet, spec, "no-token")
    assert result["out"]["token_exists"] is False
    assert "Service token file does not exist" in result["out"]["incluster"]
    assert not result["pod"]["spec"].get("volumes")
