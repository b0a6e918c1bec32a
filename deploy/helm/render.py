"""Print the chart's manifests like ``helm template``, without the helm binary.

    python deploy/helm/render.py -f my-values.yaml [-f more.yaml] [--set key=value]
        [--release eg] [--namespace analysis] [--validate 1.36]

Helm itself renders them (helm-python-sdk embeds Helm's Go SDK), so the values schema and
the chart's checks apply exactly as in ``helm install``; a bad value exits with status 1 and
Helm's message naming the key. Like ``helm template``, it reads nothing from a cluster: the
Secret it prints has new random values every time (see docs/deploy.md before applying it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import helm_python as helm

CHART = Path(__file__).resolve().parent / "elastic-gateway"


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` deep-merged into ``base`` (later -f files and --set win, as in Helm)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def render(values: dict[str, Any], release: str, namespace: str) -> str:
    """The manifests as one multi-document YAML stream, in template order."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name=release, namespace=namespace)
    documents = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        documents.append(f"---\n# Source: {path}\n{text.strip()}\n")
    return "".join(documents)


def validate(stream: str, version: str) -> list[str]:
    """Problems of each object against Kubernetes ``version``'s schemas (strict)."""
    import kubernetes_validate
    import yaml

    problems = []
    for obj in yaml.safe_load_all(stream):
        if not obj:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema in Kubernetes {version} (a CRD?), not checked")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--values", action="append", default=[], help="values file")
    parser.add_argument("--set", action="append", default=[], help="key=value, as helm --set")
    parser.add_argument("--release", default="elastic-gateway", help="release name")
    parser.add_argument("--namespace", default="default", help="release namespace")
    parser.add_argument(
        "--validate",
        metavar="VERSION",
        help="also check every object, e.g. 1.36 (needs "
        "kubernetes-validate); problems go to stderr and exit 1",
    )
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    try:
        for path in args.values:
            values = merged(values, helm.values_from_yaml(Path(path).read_text()))
        for expression in args.set:
            values = merged(values, helm.parse_set_string(expression))
        stream = render(values, args.release, args.namespace)
    except (helm.HelmError, OSError) as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(stream)
    if args.validate:
        problems = validate(stream, args.validate)
        for problem in problems:
            print(f"render.py: {problem}", file=sys.stderr)
        if any("not checked" not in p for p in problems):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
