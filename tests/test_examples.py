"""Every script in examples/, and the code blocks of docs/, run to completion.

Each runs in its own interpreter. The ```python blocks of a page run in order,
in one interpreter, as a reader pasting them one after the other would.

Where an optional package is missing (the test extra does not install torch
or matplotlib; the ``examples`` extra does), an example must say so in one
line naming the extra, and the test skips with that line; a page whose blocks
import an optional package skips with the package named.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: The one line an example prints (to stderr, exit status 1) when it lacks an optional package.
_NEEDS_EXTRA = re.compile(r'^This example needs [\w.]+: pip install -e "\.\[examples\]"$')
#: Optional top-level modules a doc page may import, and the package that provides each.
_OPTIONAL = {
    "torch": "torch",
    "PIL": "pillow",
    "ray": "ray",
    "pandas": "pandas",
    "matplotlib": "matplotlib",
    "opentelemetry": "opentelemetry-sdk",
}
_IMPORT = re.compile(r"^\s*(?:import|from)\s+([\w.]+)", re.MULTILINE)
#: Each example is meant to run in under 20 s on 2 cores; the margin covers a loaded CI machine.
TIMEOUT = 150


def _env() -> dict[str, str]:
    """The environment of the child: this checkout first on the import path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "sequential_vs_queued.py",
        "feature_union.py",
        "custom_steps.py",
        "errors.py",
    } <= names


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path) -> None:
    source = script.read_text()
    assert 'if __name__ == "__main__":' in source, "examples must guard their entry point"
    result = _run_python([str(script)], f"{script.name} exited with an error", allow_missing_extra=True)
    assert result.stdout.strip(), f"{script.name} printed nothing"


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize(
    ("script", "module"),
    [("ray_pipeline.py", "ray"), ("sklearn_integration.py", "pandas"), ("images_to_embeddings.py", "PIL")],
)
def test_example_without_its_optional_package_names_the_extra(script: str, module: str) -> None:
    """Without ``module`` (hidden from the child), the example exits with one line, no traceback."""
    hide = (
        f"import runpy, sys; sys.modules[{module!r}] = None; "
        f"runpy.run_path({str(ROOT / 'examples' / script)!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 1, result.stderr
    assert _NEEDS_EXTRA.match(result.stderr.strip()), result.stderr
    assert module in result.stderr


def _run_python(
    args: list[str], failure: str, allow_missing_extra: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a child interpreter from the root of the checkout; fail with its output unless it exits 0.

    With ``allow_missing_extra``, a child that exits 1 with the single line of
    :data:`_NEEDS_EXTRA` skips the test with that line.
    """
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    said = result.stderr.strip()
    if allow_missing_extra and result.returncode == 1 and _NEEDS_EXTRA.match(said):
        pytest.skip(said)
    assert result.returncode == 0, (
        f"{failure} (exit code {result.returncode})\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    return result


def _python_blocks(page: Path) -> list[str]:
    return _PYTHON_BLOCK.findall(page.read_text())


def _missing_optional(code: str) -> list[str]:
    """The optional packages ``code`` needs that this interpreter lacks."""
    needed = {name.split(".")[0] for name in _IMPORT.findall(code)}
    if "neuraxle_stream.otel" in code:
        needed.add("opentelemetry")
    if 'backend="ray"' in code:
        needed.add("ray")
    if "plot_timeline(" in code:
        needed.add("matplotlib")
    return sorted(
        _OPTIONAL[m] for m in needed if m in _OPTIONAL and importlib.util.find_spec(m) is None
    )


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("page", [p for p in DOCS if _python_blocks(p)], ids=lambda p: p.name)
def test_doc_code_blocks_run(page: Path) -> None:
    # Run with -c: there is no main module file for the process workers to
    # import again, as in a notebook, so the blocks need no __main__ guard.
    code = "\n".join(_python_blocks(page))
    missing = _missing_optional(code)
    if missing:
        pytest.skip(f"{page.name} needs {', '.join(missing)} (pip install -e \".[examples]\")")
    _run_python(["-c", code], f"the code blocks of {page.name} failed")


def test_architecture_page_shows_the_runtime_diagram() -> None:
    """docs/architecture.md shows the same picture as runtime.py's docstring."""
    from neuraxle_stream import runtime

    after = (runtime.__doc__ or "").split("::", 1)[1].splitlines()[1:]
    lines = []
    for line in after:
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line.rstrip())
    diagram = textwrap.dedent("\n".join(lines)).strip("\n")
    assert "supervisor" in diagram, "runtime.py's docstring has no diagram"
    page = (ROOT / "docs" / "architecture.md").read_text()
    blocks = [
        textwrap.dedent(b).strip("\n") for b in re.findall(r"```text\n(.*?)```", page, re.DOTALL)
    ]
    assert diagram in blocks
