"""kvpress_lab_example_plugin: how to ship kvpress_lab strategies from your own package.

* :mod:`.recency_norm` defines one scorer, :class:`ExampleRecencyNormScorer`, a plain frozen
  dataclass — kvpress_lab needs no base class, only the ``name`` attribute and ``score`` method.
* :mod:`.plugin` registers it, and a preset using it, through kvpress_lab's hooks. The package's
  ``pyproject.toml`` points the ``kvpress_lab`` entry-point group at that module.

Importing this package does nothing else: kvpress_lab imports :mod:`.plugin` itself when it
builds its registry.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from kvpress_lab_example_plugin.recency_norm import ExampleRecencyNormScorer

try:
    __version__ = version("kvpress-lab-example-plugin")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "ExampleRecencyNormScorer"]
