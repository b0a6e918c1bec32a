"""Rendering the Helm chart with real Helm (helm-python-sdk embeds Helm's Go SDK), for tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "elastic-gateway"
RELEASE = "eg"
NAMESPACE = "analysis"
FULLNAME = "eg-elastic-gateway"


def render(values: dict[str, Any] | None = None, name: str = RELEASE) -> list[dict[str, Any]]:
    """Every object the chart renders with ``values``, as `helm template` would (offline)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=values or {}, name=name, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue  # NOTES.txt
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str = FULLNAME) -> dict[str, Any]:
    """The one object of ``kind`` named ``name``."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def rendered_values(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The values.json the chart puts in the gateway's ConfigMap."""
    return json.loads(find(objects, "ConfigMap")["data"]["values.json"])
