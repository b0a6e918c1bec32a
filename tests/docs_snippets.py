"""The code blocks of the README and docs/, as the tests run them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    """Every ```python block of a Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def config_blocks() -> list[tuple[str, str]]:
    """(where, code) of every block that is gateway configuration (``c.<Class>...``)."""
    return [
        (f"{path.name}#{i}", code)
        for path in DOCS
        for i, code in enumerate(python_blocks(path))
        if re.search(r"^c\.\w+\.", code, flags=re.M)
    ]


def analyst_blocks() -> list[tuple[str, str]]:
    """(where, code) of every block a notebook runs (``from client_ext import ...``)."""
    return [
        (f"{path.name}#{i}", code)
        for path in DOCS
        for i, code in enumerate(python_blocks(path))
        if code.startswith("from client_ext import")
    ]
