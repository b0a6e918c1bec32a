"""docs/deploy.md's (and the chart README's) values files and render.py commands work.

Each ```yaml block that starts with ``# <file>.yaml`` is written to that file, then every
``python deploy/helm/render.py ...`` line of the guide runs, from a directory where
``deploy/`` is this repository's: the chart must render them and every object must be valid
Kubernetes (the commands carry ``--validate``). Commands that need a cluster (docker, kubectl,
helm) cannot run here; they use the same values files.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from gateway_backend.deploy_values import configure

from .chart_render import REPO, render, rendered_values

GUIDE = REPO / "docs" / "deploy.md"
CHART_README = REPO / "deploy" / "helm" / "elastic-gateway" / "README.md"


def values_files() -> dict[str, str]:
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return {m.group(1): b for b in blocks if (m := re.match(r"# (\S+\.yaml)\n", b))}


def render_commands() -> list[str]:
    text = GUIDE.read_text() + CHART_README.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith("python deploy/helm/render.py")]


def test_the_guide_has_values_files_and_render_commands():
    assert {"my-values.yaml", "external-db.yaml", "metrics.yaml"} <= set(values_files())
    assert len(render_commands()) >= 3


@pytest.mark.parametrize("command", render_commands())
def test_render_command_of_the_guide_renders_valid_objects(tmp_path: Path, command: str):
    for name, text in values_files().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "deploy").symlink_to(REPO / "deploy")
    argv = shlex.split(command)
    assert "--validate" in argv
    done = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    assert any(o["kind"] == "Deployment" for o in objects)
    unchecked = [line for line in done.stderr.splitlines() if line]
    assert all("ServiceMonitor" in line and "not checked" in line for line in unchecked)


@pytest.mark.parametrize("name", sorted(values_files()))
def test_values_file_of_the_guide_configures_the_gateway(name: str):
    values = yaml.safe_load(values_files()[name])
    env = {"ELASTIC_GATEWAY_SIMPLE_PASSWORD": "pw", "ELASTIC_GATEWAY_STATE_DIR": "/state"}
    c = configure(Config(), rendered_values(render(values)), env)
    assert c.DaskGateway.backend_class == "gateway_backend.ElasticBackend"
