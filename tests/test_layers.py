"""The one-way import rule of the estimator layer (docs/architecture.md, "Layers").

Every relative import counts: at module level, inside functions and under
``TYPE_CHECKING``. A module may import its own layer or a layer below it,
never one above, and no module takes part in an import circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "neuraxle_stream"

#: From the bottom up. A module not named here belongs to the engine (layer 0).
LAYERS: list[tuple[str, set[str]]] = [
    ("description", {"_validation", "_routing", "_branches"}),
    ("plan", {"plan"}),
    ("lifecycle", {"lifecycle"}),
    ("call", {"_cached_run", "call", "_fitting"}),
    ("estimators", {"_sklearn_output", "_composition", "_composite", "wrapper", "pipeline", "union"}),
    ("face", {"__init__", "__main__", "testing"}),
]


def _layer(module: str) -> int:
    for level, (_, names) in enumerate(LAYERS, start=1):
        if module in names:
            return level
    return 0


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative imports, anywhere in the file)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names if a.name in modules)
    return out


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.stem)
def test_no_module_imports_a_layer_above_it(path: Path) -> None:
    level = _layer(path.stem)
    above = sorted(m for m in _imports(path) if _layer(m) > level)
    assert not above, (
        f"{path.stem} (layer {LAYERS[level - 1][0] if level else 'engine'}) imports "
        f"{above}, above it; see docs/architecture.md"
    )


def test_every_layer_module_exists() -> None:
    names = {p.stem for p in PACKAGE.glob("*.py")}
    assert set().union(*(m for _, m in LAYERS)) <= names


def test_no_import_circle() -> None:
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module):], module]
            pytest.fail(f"import circle: {' -> '.join(cycle)}")
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
