"""The code blocks of the README and docs/, as the tests run them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    """Every ```python block of a Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


HUB_CONFIG_MARK = "# jupyterhub_config.py"


def config_blocks() -> list[tuple[str, str]]:
    """(where, code) of every block that is gateway configuration (``c.<Class>...``).

    JupyterHub's configuration (blocks starting ``# jupyterhub_config.py``) is not the
    gateway's: tests/e2e/test_jupyterhub.py runs it as a real hub's config instead.
    """
    return [
        (f"{path.name}#{i}", code)
        for path in DOCS
        for i, code in enumerate(python_blocks(path))
        if re.search(r"^c\.\w+\.", code, flags=re.M) and not code.startswith(HUB_CONFIG_MARK)
    ]


def hub_config_blocks() -> list[str]:
    """docs/jupyterhub.md's JupyterHub configuration blocks (the hub side), in order."""
    return [
        code
        for code in python_blocks(REPO / "docs" / "jupyterhub.md")
        if code.startswith(HUB_CONFIG_MARK)
    ]


def hub_config_block() -> str:
    """docs/jupyterhub.md's JupyterHub configuration (the hub side), as written."""
    return hub_config_blocks()[0]


SERVER_STOP_MARK = "stop_clusters_with_server"


def server_stop_blocks() -> tuple[str, str]:
    """docs/jupyterhub.md's hub and gateway blocks for ``stop_clusters_with_server``."""
    (hub,) = [code for code in hub_config_blocks() if SERVER_STOP_MARK in code]
    (gateway,) = [
        code
        for code in python_blocks(REPO / "docs" / "jupyterhub.md")
        if not code.startswith(HUB_CONFIG_MARK) and SERVER_STOP_MARK in code
    ]
    return hub, gateway


def jupyterhub_gateway_block() -> str:
    """docs/jupyterhub.md's gateway configuration behind JupyterHub, as written."""
    (block,) = [
        code
        for code in python_blocks(REPO / "docs" / "jupyterhub.md")
        if "ElasticJupyterHubAuthenticator" in code and code.startswith("c.")
    ]
    return block


def analyst_blocks() -> list[tuple[str, str]]:
    """(where, code) of every block a notebook runs (``from client_ext import ...``)."""
    return [
        (f"{path.name}#{i}", code)
        for path in DOCS
        for i, code in enumerate(python_blocks(path))
        if code.startswith("from client_ext import")
    ]
