"""The package layout the architecture promises: no import circle, type-only imports included.

A circle makes import order matter and hides which module owns a concept; the
backend, the API, the metrics, the launchers, the pools and the quotas must
form a layered graph, and so must the notebook-side client_ext.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Modules of ``package`` that ``path`` imports, anywhere in the file.

    ``from x import y`` imports submodule ``x.y`` if there is one, else module ``x``
    (the implicit import of a parent package is not an edge).
    """
    name = module_name(path)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                stem = ".".join(anchor + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:
                sub = f"{stem}.{alias.name}"
                found.add(sub if sub in modules else stem)
    return {m for m in found if m in modules and m != name}


def graph(package: str) -> dict[str, set[str]]:
    files = {module_name(f): f for f in sorted((ROOT / package).rglob("*.py"))}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", ["gateway_backend", "client_ext"])
def test_no_import_circle(package):
    assert cycles(graph(package)) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


MAX_MODULE_LINES = 550


@pytest.mark.parametrize("package", ["gateway_backend", "client_ext"])
def test_no_module_grows_past_one_readable_file(package):
    # ~500 lines is the aim; past this a module holds more than one concern: split it.
    sizes = {
        module_name(path): len(path.read_text().splitlines())
        for path in (ROOT / package).rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
