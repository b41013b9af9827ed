"""Sphinx configuration of the neuraxle_stream documentation.

Build (warnings are errors, every cross-reference must resolve)::

    sphinx-build -W --keep-going -n -b html docs docs/_build/html

The pages are MyST Markdown (myst-parser); the API reference is autodoc with
numpydoc. Nothing is fetched from the internet: intersphinx is off, so
references to other projects' names (``numpy.ndarray``) are listed in
``nitpick_ignore`` below instead of being linked.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Document this checkout, not whatever version is installed elsewhere.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_ext"))

import neuraxle_stream  # noqa: E402

project = "neuraxle_stream"
author = "neuraxle_stream contributors"
copyright = "neuraxle_stream contributors, MIT License"
release = neuraxle_stream.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "numpydoc",
    "nxdocs",  # docs/_ext/nxdocs.py: the API names, submodules and pages not listed by hand
]

# numpydoc loads autosummary, which wants .rst among the suffixes
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# --- cross-references: every one must resolve (-n), none is looked up online ---
nitpicky = True
#: Other projects' names that the docstrings and the class bases point to: with
#: no intersphinx (the build works offline) they cannot be linked. Our own names
#: are never listed here: a broken reference to one of them fails the build.
_EXTERNAL = """
    abc.ABC contextlib.AbstractContextManager logging.Handler logging.Logger
    numpy.ndarray pandas.DataFrame pandas.Series scipy.sparse.spmatrix joblib.Memory
    sklearn.base.BaseEstimator sklearn.base.TransformerMixin sklearn.pipeline.Pipeline
    sklearn.pipeline.FeatureUnion torch.nn.Module torch.Tensor torch.device
"""
nitpick_ignore = [
    (role, name) for name in _EXTERNAL.split() for role in ("py:class", "py:obj", "py:exc")
]

# --- autodoc and numpydoc ---
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signature shows them; numpydoc's sections carry the prose
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False  # scikit-learn's own docstrings are not ours to build
numpydoc_show_class_members = False  # autodoc lists the members once
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()  # style is checked in review, not by the build

# --- MyST: Markdown links between pages must resolve, headings get anchors ---
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
suppress_warnings: list[str] = []

# --- HTML ---
# furo: a theme readers know, with a text column wide enough for the code
# blocks (kept to 79 characters: tests/test_docs.py checks it) and tables that
# scroll inside their own box; docs/_static/custom.css sets the few widths.
html_theme = "furo"
html_title = "neuraxle_stream"  # the version is in the footer: the sidebar title stays one word
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "sidebar_hide_name": False,
    "navigation_with_keys": True,
}
html_last_updated_fmt = None
html_show_sphinx = False
