"""The process kubelet's in-cluster pieces that need no API server (tests/fakes/kubernetes)."""

from __future__ import annotations

import asyncio
import base64

import pytest

from tests.fakes.kubernetes import projected

POD = {
    "metadata": {
        "name": "p",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"b": "2", "a": 'say "hi"'},
    },
    "spec": {"nodeName": "n1"},
}


def test_api_server_env_names_the_api_servers_own_address():
    env = projected.api_server_env("https://127.0.0.1:6443")
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == env["KUBERNETES_SERVICE_PORT_HTTPS"] == "6443"
    assert env["KUBERNETES_PORT"] == env["KUBERNETES_PORT_6443_TCP"] == "tcp://127.0.0.1:6443"


def test_downward_api_labels_are_sorted_key_quoted_value_lines():
    assert projected.downward_value(POD, "metadata.labels") == 'a="say "hi""\nb="2"'
    assert projected.downward_value(POD, "spec.serviceAccountName") == "default"


def test_an_unsupported_downward_field_is_refused_by_name():
    with pytest.raises(RuntimeError, match=r"'status\.podIPs'"):
        projected.downward_value(POD, "status.podIPs")


def test_projected_sources_become_files_with_their_modes():
    volume = {
        "projected": {
            "defaultMode": 0o640,
            "sources": [
                {"configMap": {"name": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"secret": {"name": "s", "items": [{"key": "k", "path": "k", "mode": 0o400}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        }
    }
    objects = {
        ("configmaps", "ca"): {"data": {"ca.crt": "PEM", "other": "x"}},
        ("secrets", "s"): {"kind": "Secret", "data": {"k": base64.b64encode(b"v").decode()}},
    }

    async def get(kind, name, optional):
        return objects[kind, name]

    files = asyncio.run(projected.volume_files(POD, volume, None, get))
    assert files == {"ca.crt": (b"PEM", 0o640), "k": (b"v", 0o400), "namespace": (b"ns", 0o640)}


def test_fixed_path_mounts_without_root_fail_saying_what_to_change(monkeypatch, tmp_path):
    monkeypatch.setattr(projected.os, "geteuid", lambda: 1000)
    binds = [("/x", "/var/run/secrets/kubernetes.io/serviceaccount", True)]
    with pytest.raises(RuntimeError, match=r"as root.*automountServiceAccountToken: false"):
        projected.in_mount_namespace(["true"], binds, tmp_path)


def test_fixed_path_mounts_as_root_run_the_command_in_a_private_mount_namespace(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(projected.os, "geteuid", lambda: 0)
    binds = [("/x", "/var/run/secrets/kubernetes.io/serviceaccount", True)]
    command = projected.in_mount_namespace(["sleep", "1"], binds, tmp_path)
    assert command[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert command[-3:] == ["--", "sleep", "1"]
    assert ["--bind", "/x", binds[0][1], "ro"] == command[command.index("--bind") :][:4]
