"""Keep the site complete while the package and the pages grow.

Two directives for ``api.md``:

``{apiref-rest}``
    autodoc for every name of ``neuraxle_stream.__all__`` that the page has not
    documented above it, so that a new public name is never missing from the
    reference (the page groups names by concern; this catches the new ones).
``{apiref-submodules}``
    ``automodule`` for each public submodule that exists in this checkout
    (``neuraxle_stream.otel``, ``.torch_steps``, ``.testing``, ``.timeline``), leaving out the
    names it shares with ``neuraxle_stream`` (documented there, once).

A submodule that exists but fails to import is not hidden: autodoc's warning
fails the ``-W`` build.

And one safety net for pages: a Markdown page of ``docs/`` that no toctree
lists yet (a page just added) is appended to the index under "More pages",
so that it is built, linked and checked instead of failing the build as an
orphan. Its place in the index's toctrees is still to be chosen by hand.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

PACKAGE = "neuraxle_stream"
#: Public submodules, in the order the reference shows them.
SUBMODULES = ("otel", "torch_steps", "testing", "timeline")


def _public_names() -> list[str]:
    package = importlib.import_module(PACKAGE)
    return list(package.__all__)


def _autodoc_line(name: str) -> str:
    obj: Any = getattr(importlib.import_module(PACKAGE), name)
    if isinstance(obj, type):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
    elif callable(obj):
        kind = "autofunction"
    else:
        kind = "autodata"
    return f".. {kind}:: {PACKAGE}.{name}"


class _RestDirective(SphinxDirective):
    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        """Parse reStructuredText ``lines`` here (in a MyST page: through ``eval-rst``)."""
        if self.env.docname and self.env.doc2path(self.env.docname).suffix == ".md":
            lines = ["```{eval-rst}", *lines, "```"]
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=self.env.docname), container)
        return list(container.children)


class ApiRefRest(_RestDirective):
    """autodoc for the public names not yet documented on this page."""

    def run(self) -> list[nodes.Node]:
        objects = self.env.get_domain("py").objects
        missing = [n for n in _public_names() if f"{PACKAGE}.{n}" not in objects]
        if not missing:
            return self._parse(["None: every public name is in a group above.", ""])
        lines = [
            "Names not yet placed in a group above:",
            "",
        ]
        for name in missing:
            lines += [_autodoc_line(name), ""]
        return self._parse(lines)


class ApiRefSubmodules(_RestDirective):
    """automodule for each public submodule present in this checkout."""

    def run(self) -> list[nodes.Node]:
        top = set(_public_names())
        lines: list[str] = []
        for short in SUBMODULES:
            name = f"{PACKAGE}.{short}"
            if importlib.util.find_spec(name) is None:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # autodoc reports it: the -W build fails
                shared: list[str] = []
            else:
                shared = sorted(set(getattr(module, "__all__", [])) & top)
            lines += [f".. rubric:: ``{name}``", "", f".. automodule:: {name}", "   :members:"]
            if shared:
                lines.append(f"   :exclude-members: {', '.join(shared)}")
            lines.append("")
            if shared:
                refs = ", ".join(f":class:`~{PACKAGE}.{n}`" for n in shared)
                lines += [f"Also in this module, documented above: {refs}.", ""]
        return self._parse(lines) if lines else []


def _skip_member(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """Leave out scikit-learn's generated ``set_*_request`` methods: their docs are scikit-learn's."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def _is_private(base: Any) -> bool:
    """A private class, or a class of a private module (``neuraxle_stream._composition.Composition``)."""
    return any(part.startswith("_") for part in (*base.__module__.split("."), base.__name__))


def _public_bases(bases: list[Any]) -> list[Any]:
    out: list[Any] = []
    for base in bases:
        if _is_private(base):
            candidates = _public_bases([b for b in base.__bases__ if b is not object])
        else:
            candidates = [base]
        out += [b for b in candidates if b not in out]
    return out


def _process_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """Show public bases only: a private base (or one of a private module) is replaced by its own public bases."""
    bases[:] = _public_bases(list(bases))


_TOCTREE = re.compile(r"^(`{3,}|:{3,})\{toctree\}[^\n]*\n(.*?)^\1", re.MULTILINE | re.DOTALL)


def _listed_pages(srcdir: Path) -> set[str]:
    """The documents named in the toctrees of the Markdown pages."""
    listed: set[str] = set()
    for page in srcdir.glob("*.md"):
        for _, body in _TOCTREE.findall(page.read_text(encoding="utf-8")):
            for line in body.splitlines():
                entry = line.strip()
                if entry and not entry.startswith(":"):
                    listed.add(entry.removesuffix(".md"))
    return listed


def _add_unlisted_pages(app: Any, docname: str, source: list[str]) -> None:
    """Append a toctree of the pages that no toctree lists to the index."""
    if docname != app.config.root_doc:
        return
    srcdir = Path(app.srcdir)
    pages = {p.stem for p in srcdir.glob("*.md")} - {docname}
    unlisted = sorted(pages - _listed_pages(srcdir))
    if unlisted:
        entries = "\n".join(unlisted)
        source[0] += f"\n\n```{{toctree}}\n:caption: More pages\n:hidden:\n\n{entries}\n```\n"


def _reread_index(
    app: Any, env: Any, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    """In an incremental build, re-read the index when pages come or go."""
    return [app.config.root_doc] if added or removed else []


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _add_unlisted_pages)
    app.connect("env-get-outdated", _reread_index)
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-bases", _process_bases)
    app.add_directive("apiref-rest", ApiRefRest)
    app.add_directive("apiref-submodules", ApiRefSubmodules)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
