"""The package's shape (docs/architecture.md): no import cycles, imports only down the pipeline, small modules.

Imports are read from the source with ``ast`` — lazy imports inside functions and ``TYPE_CHECKING``
blocks count — so a cycle hidden in a function body fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tnderiv"
MAX_LINES = 600
# The import order (docs/architecture.md): a package imports only packages of a lower rank. ``simplify``
# needs only ``ir`` (calculus calls it at the end of ``derive``), so it ranks beside ``layers``.
RANK = {
    "ir": 0,
    "layers": 1,
    "simplify": 1,
    "calculus": 2,
    "plan": 3,
    "api": 4,
    "render": 5,
    "explore": 5,
    "model": 5,
    "integrations": 5,
    "cli": 6,
    "demo": 6,
}


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of tnderiv (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The tnderiv modules ``name`` imports anywhere in its source (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            while target and target not in modules:  # ``from pkg import name``: the longest module prefix
                target = target.rsplit(".", 1)[0] if "." in target else ""
            # the package itself and one's own parent packages (run first anyway) are not edges
            if target and target != name and target != "tnderiv" and not name.startswith(target + "."):
                found.add(target)
    return found


def _package(module: str) -> str:
    """``tnderiv.plan.compiled`` → ``plan``; the top-level ``api*.py`` modules are the package ``api``."""
    part = module.split(".")[1] if "." in module else module
    return "api" if part.startswith("api") else part


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    modules = _modules()
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        g.add_edges_from((name, target) for target in _imported(name, path, modules))
    return g


def test_the_import_graph_is_read():
    # guards the reader itself: known edges must be found, or every check below would pass vacuously
    modules = _modules()
    assert "tnderiv.ir.diagram" in modules and "tnderiv.plan.compiled" in modules
    assert "tnderiv.ir.diagram" in _imported("tnderiv.ir", modules["tnderiv.ir"], modules)
    assert "tnderiv.plan.bind" in _imported("tnderiv.plan.compiled", modules["tnderiv.plan.compiled"], modules)


def test_no_import_cycle_between_files(graph):
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, "files importing each other in a circle (lazy imports count): " + "; ".join(
        " ↔ ".join(c) for c in cycles
    )


def test_no_import_cycle_between_packages(graph):
    packages = nx.DiGraph()
    packages.add_edges_from((_package(a), _package(b)) for a, b in graph.edges if _package(a) != _package(b))
    cycles = [sorted(c) for c in nx.strongly_connected_components(packages) if len(c) > 1]
    assert not cycles, f"packages importing each other in a circle: {cycles}"


def test_packages_import_only_down_the_pipeline(graph):
    assert {_package(m) for m in graph if m != "tnderiv"} <= set(RANK), "a new package needs a rank in RANK"
    upward = sorted(
        f"{a} → {b}"
        for a, b in graph.edges
        if a != "tnderiv" and RANK[_package(b)] > RANK[_package(a)]
    )
    assert not upward, "imports against the pipeline order (docs/architecture.md): " + ", ".join(upward)


def test_no_module_over_the_size_limit():
    lengths = {path.relative_to(PACKAGE.parent): len(path.read_text(encoding="utf-8").splitlines()) for path in _modules().values()}
    too_long = {str(p): n for p, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them along their seams): {too_long}"
