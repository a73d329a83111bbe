"""Sphinx configuration for the kvpress_lab documentation.

Build (from the repository root)::

    .venv/bin/sphinx-build -W -b html docs docs/_build/html
    .venv/bin/sphinx-build -W -b doctest docs docs/_build/doctest

No network is needed: intersphinx reads inventories written by ``_ext/offline_inventories.py``,
and the reference pages for strategies, hooks, the CLI and the API are generated from the code
by ``_ext/kvpress_docs.py`` on every build.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as _version
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import offline_inventories  # noqa: E402

# -- Project -------------------------------------------------------------------------------------

project = "kvpress_lab"
author = "kvpress_lab developers"
copyright = "kvpress_lab developers"  # noqa: A001
release = _version("kvpress-lab")  # the installed distribution's version, never a copy
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "numpy_docstrings",  # _ext/numpy_docstrings.py: napoleon, NumPy style only (see its docstring)
    "kvpress_docs",  # _ext/kvpress_docs.py: reference pages generated from the registry and the CLI
]
exclude_patterns = ["_build", "_intersphinx", "Thumbs.db", ".DS_Store"]
nitpicky = True  # every cross-reference must resolve: a dangling one fails the -W build

# -- autodoc / napoleon --------------------------------------------------------------------------

autodoc_member_order = "bysource"
# Type hints go into the parameter lists (where each is parsed on its own) rather than into
# signatures, whose dataclass defaults such as ``<factory>`` are not valid Python to parse.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"show-inheritance": True}
autodoc_inherit_docstrings = False  # inherited transformers docstrings are not ours to check
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_preprocess_types = False  # Sphinx's own type-field parsing handles Mapping[str, Any]

# -- intersphinx (offline) -----------------------------------------------------------------------
# Each project maps to its online docs (the links in the HTML) and to a local inventory written
# here on every build, so nothing is downloaded; see _ext/offline_inventories.py.
intersphinx_mapping = offline_inventories.write_all(DOCS / "_intersphinx")

# -- doctest -------------------------------------------------------------------------------------

# Docstring examples (``>>>``) are tested here, on the pages autodoc renders them on: each
# generated page's ``testsetup`` calls ``use_module_globals`` with its module(s), so an example
# sees the names of the module it documents, as with ``python -m doctest``.
doctest_global_setup = """
import importlib

import torch

torch.set_num_threads(1)  # tiny tensors: extra threads only spin on a busy CI machine

def use_module_globals(name):
    module = importlib.import_module(name)
    globals().update({k: v for k, v in vars(module).items() if not k.startswith("__")})
"""

# -- HTML ----------------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"kvpress_lab {release}"
html_theme_options = {
    "description": "Composable KV-cache compression for transformers",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
