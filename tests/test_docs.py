"""The documentation site builds without a warning, and nothing in it points nowhere.

- ``sphinx-build -W --keep-going -n`` of ``docs/`` succeeds: every page is in
  a toctree, every cross-reference to our names and every Markdown link and
  anchor between pages resolves (nitpicky mode, MyST's link checks);
- the API reference documents every name of ``neuraxle_stream.__all__`` and
  every public submodule in this checkout;
- ``docs/examples.md`` lists every script of ``examples/``;
- every relative link of README.md and docs/*.md reaches a file, and every
  ``#anchor`` a heading of its page (also without Sphinx installed);
- the ``>>>`` examples of every module's docstrings pass, as doctests.

What is listed is read when the tests run, so pages, examples and public names
added later are checked too. External links are not checked: the build runs
offline.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import pkgutil
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest

import neuraxle_stream

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The public submodules the API reference shows, when they exist.
PUBLIC_SUBMODULES = ("otel", "torch_steps", "testing", "timeline")
#: The build takes under 15 s here; the margin covers a loaded CI machine.
BUILD_TIMEOUT = 300


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


# -- the Sphinx build ------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the site once, warnings as errors, into a temporary folder."""
    if importlib.util.find_spec("sphinx") is None:
        pytest.skip('sphinx is not installed (pip install -e ".[docs]" or ".[test]")')
    out = tmp_path_factory.mktemp("docs") / "html"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-n",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"sphinx-build failed ({result.returncode})\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    return out


def _documented(site: Path) -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", posixpath.join)
    data = getattr(inventory, "data", inventory)  # a class from Sphinx 8.2 on, a dict before
    return {name for kind, items in data.items() if kind.startswith("py:") for name in items}


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_site_builds_with_warnings_as_errors(built_site: Path) -> None:
    for page in ("index", "getting_started", "user_guide", "migration", "examples", "api"):
        assert (built_site / f"{page}.html").is_file(), page


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_api_reference_documents_every_public_name(built_site: Path) -> None:
    documented = _documented(built_site)
    missing = [n for n in neuraxle_stream.__all__ if f"neuraxle_stream.{n}" not in documented]
    assert not missing, f"public names missing from docs/api.md: {missing}"
    for short in PUBLIC_SUBMODULES:
        name = f"neuraxle_stream.{short}"
        if importlib.util.find_spec(name) is None:
            continue  # not written yet
        assert name in documented, f"{name} is missing from the API reference"
        for member in getattr(importlib.import_module(name), "__all__", []):
            assert {f"{name}.{member}", f"neuraxle_stream.{member}"} & documented, (
                f"{name}.{member} is missing from the API reference"
            )


# -- pages ---------------------------------------------------------------------------


def test_examples_page_lists_every_example() -> None:
    page = (DOCS / "examples.md").read_text()
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert scripts
    missing = [s for s in scripts if f"](../examples/{s})" not in page]
    assert not missing, (
        f"docs/examples.md does not list (as a link with a one-line description): {missing}"
    )


_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """The anchor of a heading, as MyST (``myst_heading_anchors``) and GitHub make it."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    slugs: set[str] = set()
    for _, title in _HEADING.findall(_FENCE.sub("", page.read_text())):
        slug = _slug(title)
        n, candidate = 0, slug
        while candidate in slugs:  # repeated headings get -1, -2, ...
            n += 1
            candidate = f"{slug}-{n}"
        slugs.add(candidate)
    return slugs


def _links(page: Path) -> list[str]:
    prose = _prose(page.read_text())
    return _LINK.findall(prose) + _IMAGE.findall(prose)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(
                f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"
            )
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not broken, f"broken links in {page.name}:\n" + "\n".join(broken)


def test_link_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checker above is not vacuous: it sees links, anchors and misses."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A `code` heading: yes\n\n"
        "[ok](#a-code-heading-yes) [self](page.md#title) [gone](nothere.md) "
        "`[not a link](x.md)`\n\n```python\n[x](y.md)\n```\n"
    )
    assert _links(page) == ["#a-code-heading-yes", "page.md#title", "nothere.md"]
    assert _anchors(page) == {"title", "a-code-heading-yes"}


# -- docstring examples --------------------------------------------------------------


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(neuraxle_stream.__path__) if m.name != "__main__"]
    return ["neuraxle_stream", *(f"neuraxle_stream.{n}" for n in sorted(names))]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples_pass(module_name: str) -> None:
    """The ``>>>`` examples of a module's docstrings, with the module's globals (as pytest --doctest-modules)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # an optional dependency imported at module level
        if (exc.name or "").startswith("neuraxle_stream"):
            raise
        pytest.skip(f"{module_name} needs {exc.name}, which is not installed")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module_name):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, (
        f"{results.failed} docstring example(s) of {module_name} failed (see stdout)"
    )


# -- nothing cut at 1280 px ------------------------------------------------------------
#
# Rendered in Chromium at 1280 px, the furo text column (docs/_static/custom.css)
# holds about 100 characters of code. These checks stand in for a browser in
# CI: code written to 79 characters, and nothing shown in a code box wider than
# CODE_BOX characters, on the pages, in the files they include, and in the
# docstring examples the API reference shows.

#: Characters a code line of the pages may have: the column holds ~100.
CODE_BOX = 96
#: Python and shell code is written to this width (PEP 8's 79).
CODE_WIDTH = 79
_FENCE = re.compile(r"^( *)```(\{[\w-]+\}|\w*)([^\n]*)\n(.*?)^\1```", re.S | re.M)


def _fenced(text: str) -> list[tuple[str, str, str]]:
    """``(language or directive, its argument, body)`` of each fenced block of a Markdown page."""
    return [(m[2], m[3].strip(), m[4]) for m in _FENCE.finditer(text)]


def _too_wide(body: str, width: int) -> list[str]:
    return [line for line in body.splitlines() if len(line) > width]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_code_blocks_fit_the_column(page: Path) -> None:
    wide: list[str] = []
    for language, argument, body in _fenced(page.read_text(encoding="utf-8")):
        if language == "{literalinclude}":
            wide += _too_wide((page.parent / argument).read_text(encoding="utf-8"), CODE_BOX)
            continue
        if language.startswith("{"):
            continue  # a directive: eval-rst, image, ...
        wide += _too_wide(body, CODE_WIDTH if language in ("python", "sh", "bash") else CODE_BOX)
    assert not wide, f"{page.name}: code lines too wide for the column at 1280 px:\n" + "\n".join(wide)


def test_fence_parser_sees_languages_and_includes() -> None:
    text = "a\n```python\nx = 1\n```\n\n```{literalinclude} f.txt\n:language: text\n```\n"
    assert _fenced(text) == [("python", "", "x = 1\n"), ("{literalinclude}", "f.txt", ":language: text\n")]


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples_fit_the_column(module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pytest.skip(f"{module_name} needs an optional dependency")
    wide = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, module_name):
        for example in test.examples:
            shown = [f">>> {line}" for line in example.source.splitlines()]
            shown += example.want.splitlines() + (example.exc_msg or "").splitlines()
            wide += [f"{test.name}: {line}" for line in shown if len(line) > CODE_BOX]
    assert not wide, "docstring examples too wide for the API page at 1280 px:\n" + "\n".join(wide)
