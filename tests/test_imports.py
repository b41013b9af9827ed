"""The package's imports: no circle, and no module importing a layer above its own.

The imports are read from the source with :mod:`ast`: every import counts,
those inside functions (lazy) and under ``if TYPE_CHECKING:`` included, since
a circle hidden by a lazy import is still a circle to the reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "neuraxle_stream"

#: The layers, bottom first. A module may import modules of its own layer or
#: of the layers below, never above. Every module is in exactly one layer
#: (names of modules that do not exist yet are allowed, so that the list can
#: name a layer's modules before they are written).
LAYERS: list[tuple[str, set[str]]] = [
    # the engine
    ("leaves", {"_libc", "_version", "config", "_step_calls", "exceptions", "stages", "_containers", "transport", "shm_segments",
                "shared_rows", "quantiles"}),
    ("steps and messages", {"steps", "messages", "minibatches", "queues", "savers", "joiner",
                            "trace_results", "tracing", "cache_keys", "caching", "torch_steps", "retries"}),
    ("observation", {"timeline", "stats", "hooks", "otel"}),
    ("workers", {"workers", "pool", "start_methods", "backends", "ray_actors"}),
    ("runtimes", {"runtime_base", "feeder", "supervision", "stopping", "replacement", "runtime", "ray_calls", "ray_startup", "ray_backend", "monitor"}),
    # above the engine: description, plan, lifecycle, call, estimators (docs/architecture.md)
    ("description", {"_validation", "_routing", "_branches"}),
    ("plan", {"plan", "chaining"}),
    ("lifecycle", {"lifecycle"}),
    ("call", {"_cached_run", "call", "_fitting"}),
    ("estimators", {"_sklearn_output", "_composition", "_composite", "wrapper", "pipeline", "union"}),
    ("faces", {"__init__", "__main__", "testing"}),
]


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name relative to it (``__init__`` for the package)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: set[str]) -> str:
    """The package's module that ``name`` (dotted, relative to the package) is, or is in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or "__init__"


def _imports(module: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for each import of a module of the package in ``path``."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if module == "__init__":
        package = []
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif node.module and (node.module + ".").startswith(PACKAGE.name + "."):
                base = []
                node_module = node.module.split(".", 1)[1] if "." in node.module else ""
                names = [node_module] if node_module else []
                stem = ".".join(names)
                for alias in node.names:  # "from neuraxle_stream[.x] import y": y may be a module
                    target = ".".join([*names, alias.name])
                    found.append((_resolve(target if target in modules else stem, modules), node.lineno))
                continue
            else:
                continue
            stem = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:  # "from . import x" imports the module x, when there is one
                target = f"{stem}.{alias.name}" if stem else alias.name
                found.append((_resolve(target if target in modules else stem, modules), node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.name + ".").startswith(PACKAGE.name + "."):
                    found.append((_resolve(alias.name.partition(".")[2], modules), node.lineno))
    return sorted({(target, line) for target, line in found if target != module}, key=lambda e: (e[1], e[0]))


def _graph() -> dict[str, list[tuple[str, int]]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer_of() -> dict[str, int]:
    return {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def test_every_module_is_in_exactly_one_layer() -> None:
    seen: dict[str, str] = {}
    twice = []
    for layer, modules in LAYERS:
        for module in modules:
            if module in seen:
                twice.append(f"{module} (in {seen[module]!r} and {layer!r})")
            seen[module] = layer
    missing = sorted(set(_modules()) - set(seen))
    assert not twice, "modules in two layers: " + ", ".join(twice)
    assert not missing, f"modules in no layer of tests/test_imports.py LAYERS: {missing}"


def test_no_import_circle() -> None:
    graph = _graph()
    circles = _circles(graph)
    lines = []
    for circle in circles:
        members = set(circle)
        edges = []
        for module in circle:
            by_target: dict[str, list[str]] = {}
            for target, line in graph[module]:
                if target in members:
                    by_target.setdefault(target, []).append(str(line))
            edges += [f"    {module} imports {t} (lines {', '.join(ls)})" for t, ls in sorted(by_target.items())]
        lines.append("circle: " + " <-> ".join(circle) + "\n" + "\n".join(edges))
    assert not circles, f"{len(circles)} import circle(s) in neuraxle_stream/:\n" + "\n".join(lines)


def test_no_module_imports_a_layer_above_its_own() -> None:
    layer_of = _layer_of()
    upward = []
    for module, imports in sorted(_graph().items()):
        for target, line in imports:
            if module in layer_of and target in layer_of and layer_of[target] > layer_of[module]:
                upward.append(
                    f"    {module}:{line} ({LAYERS[layer_of[module]][0]}) imports "
                    f"{target} ({LAYERS[layer_of[target]][0]})"
                )
    assert not upward, f"{len(upward)} import(s) up the layers:\n" + "\n".join(upward)


def test_the_import_parser_sees_lazy_and_type_only_imports() -> None:
    graph = {module: {target for target, _ in imports} for module, imports in _graph().items()}
    assert "torch_steps" in graph["__init__"]  # in __getattr__ and under TYPE_CHECKING
    assert "stats" in graph["runtime_base"]  # under TYPE_CHECKING only
    assert "ray_backend" in graph["plan"]  # inside a method only


@pytest.mark.timeout(120)
def test_importing_the_package_loads_no_optional_heavy_module() -> None:
    code = (
        "import sys, neuraxle_stream\n"
        "heavy = ('torch', 'ray', 'opentelemetry', 'PIL', 'torchvision')\n"
        "ours = ('neuraxle_stream.torch_steps', 'neuraxle_stream.otel', 'neuraxle_stream.ray_backend',\n"
        "        'neuraxle_stream.ray_actors', 'neuraxle_stream.ray_calls')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in ours))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_public_names_are_importable_and_listed() -> None:
    import neuraxle_stream
    from neuraxle_stream import DecodeImages, TorchModuleStep
    from neuraxle_stream.torch_steps import DecodeImages as Decode
    from neuraxle_stream.torch_steps import TorchModuleStep as ModuleStep

    assert (TorchModuleStep, DecodeImages) == (ModuleStep, Decode)
    assert {"TorchModuleStep", "DecodeImages"} <= set(neuraxle_stream.__all__) & set(dir(neuraxle_stream))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        neuraxle_stream.no_such_name
