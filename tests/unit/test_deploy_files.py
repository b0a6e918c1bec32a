"""deploy/Dockerfile and deploy/helm/render.py, as docs/deploy.md uses them.

The image is built by sites, not here (no container runtime on the test machine): these
tests read the Dockerfile for what the chart relies on. render.py runs as the docs run it.
"""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from .chart_render import CHART, REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"


def final_stage() -> list[str]:
    """The instructions of the Dockerfile's last stage (the image), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    return instructions[last_from:]


def test_image_runs_as_the_non_root_user_the_chart_expects():
    users = [line.split()[1] for line in final_stage() if line.startswith("USER ")]
    assert users, "the image must end on a USER"
    uid, _, gid = users[-1].partition(":")
    pod = yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]["podSecurityContext"]
    assert int(uid) == pod["runAsUser"] != 0
    assert int(gid) == pod["runAsGroup"] != 0


def test_image_installs_the_server_extra_on_a_slim_python():
    stage = final_stage()
    assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim$", stage[0])
    assert any('"elastic-gateway[server]"' in line for line in stage if line.startswith("RUN "))


def test_image_checks_the_go_proxy_came_with_dask_gateway_server():
    assert any("dask-gateway-proxy" in line for line in final_stage() if line.startswith("RUN "))


def test_image_bakes_in_no_secret():
    for line in final_stage():
        if line.split()[0] in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"TOKEN|SECRET|PASSW|_KEY", line, flags=re.I), line


def test_build_context_holds_only_the_package_sources():
    lines = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line for line in lines if line and not line.startswith("#")]
    assert ignore[0] == "*"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "gateway_backend", "client_ext"}


def render_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "deploy" / "helm" / "render.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_render_script_prints_the_manifests_of_a_values_file(tmp_path):
    values = tmp_path / "my-values.yaml"
    values.write_text("image:\n  repository: registry.example.org/elastic-gateway\n")
    done = render_script("-f", str(values), "--release", "eg", "--namespace", "analysis")
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/elastic-gateway:0.1.0"
    assert deployment["metadata"]["namespace"] == "analysis"


def test_render_script_validates_against_kubernetes():
    done = render_script("--validate", "1.36")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_render_script_refuses_bad_values_naming_the_key():
    done = render_script("--set", "gateway.replicas=2")
    assert done.returncode == 1 and done.stdout == ""
    assert "at '/gateway/replicas': value must be 1" in done.stderr
