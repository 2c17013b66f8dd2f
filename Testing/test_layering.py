"""The backend's import layering (docs/design.md §2): imports go down the layers, never up,
and no modules import each other, counting imports inside functions. Read from the source with
`ast`, so a lazy import that would only fail at run time is caught here.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "backend" / "medsegrwkv"

# Lowest first. A subpackage may import its own layer and the ones before it.
LAYERS = ["errors", "progress", "preprocess", "io", "nets", "weights", "inference", "interactive", "function",
          "training", "grading", "cohort", "engine", "benchmark", "cli", "__main__"]


def module_name(path: Path) -> str:
    parts = ("medsegrwkv", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, package: str, known: set[str]) -> set[str]:
    """Every known module that module `name` (in `package`) imports anywhere in its body;
    `from pkg import sub` names the submodule."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imported_modules(path.read_text(), name, package, known)
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"  # the package root holds version and labels only


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_subpackage_has_a_layer():
    assert {layer(m) for m in import_graph()} <= set(LAYERS)


def test_no_layer_imports_a_higher_one():
    graph = import_graph()
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in sorted(targets)
              if LAYERS.index(layer(t)) > LAYERS.index(layer(m))]
    assert upward == []


def test_no_import_cycles_between_modules_or_subpackages():
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(layer(module), set()).update(layer(t) for t in targets if layer(t) != layer(module))
    assert cycles(packages) == []
    assert cycles(graph) == []


def test_the_checker_sees_cycles_and_lazy_imports():
    """The checks above would catch a cycle made by an import inside a function."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = "import os\ndef f():\n    from medsegrwkv.cli.main import main\n    from . import x\n    from .x import y"
    known = {"medsegrwkv.cli.main", "medsegrwkv.nets.x", "medsegrwkv.nets.mod"}
    assert imported_modules(source, "medsegrwkv.nets.mod", "medsegrwkv.nets", known) == {
        "medsegrwkv.cli.main", "medsegrwkv.nets.x"}
