"""Hook specifications: how plugins register strategies with kvpress_lab.

Plugins are modules (or objects) exposing functions marked with :data:`hookimpl`, loaded from the
``kvpress_lab`` entry-point group — the built-in strategies load exactly the same way. Each hook
is called once, when the registry is first built; none is called per layer on the hot path: a
:class:`~kvpress_lab.Recipe` looks its strategies up by name when it is constructed.

A plugin package declares itself in its ``pyproject.toml``::

    [project.entry-points.kvpress_lab]
    my_plugin = "my_package.kvpress_plugin"

and ``my_package/kvpress_plugin.py`` contains::

    from kvpress_lab import hookimpl

    @hookimpl
    def kvpress_lab_register_scorers():
        return [MyScorer]

Every hook returns a sequence and is collected from all plugins (none stops at the first result).
Names must be unique per role across all plugins: a clash raises
:class:`~kvpress_lab.errors.DuplicateStrategyError` naming both plugins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

from kvpress_lab.validation import NAME_PATTERN

if TYPE_CHECKING:
    from kvpress_lab.presets import Preset

__all__ = ["PROJECT_NAME", "NAME_PATTERN", "hookspec", "hookimpl"]

#: pluggy project name, also the entry-point group.
PROJECT_NAME = "kvpress_lab"


hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for plugin hook implementations.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------
# Strategy registration (called once, when the registry is built)
# ---------------------------------------------------------------------------------------------


@hookspec
def kvpress_lab_register_allocators() -> Sequence[type]:
    """Register layer allocators: how many entries each layer keeps.

    Each returned class follows :class:`~kvpress_lab.protocols.Allocator`: a dataclass with a
    ``name`` and ``scope`` class attribute and an ``allocate(request)`` method.

    Results from all plugins are collected (does not stop at the first non-None result).

    :return: a sequence of allocator classes.

    .. versionadded:: 0.1
    """


@hookspec
def kvpress_lab_register_scorers() -> Sequence[type]:
    """Register token scorers: which cached entries matter.

    Each returned class follows :class:`~kvpress_lab.protocols.Scorer`: a dataclass with a ``name``
    class attribute and a ``score(view)`` method returning ``(B, Hkv, T)`` float32 scores.

    Results from all plugins are collected (does not stop at the first non-None result).

    :return: a sequence of scorer classes.

    .. versionadded:: 0.1
    """


@hookspec
def kvpress_lab_register_executors() -> Sequence[type]:
    """Register eviction executors: select kept entries and build the compressed cache layer.

    Each returned class follows :class:`~kvpress_lab.protocols.Executor`.

    Results from all plugins are collected (does not stop at the first non-None result).

    :return: a sequence of executor classes.

    .. versionadded:: 0.1
    """


@hookspec
def kvpress_lab_register_presets() -> Sequence[Preset]:
    """Register named recipe presets such as ``"pyramidkv"``.

    Results from all plugins are collected (does not stop at the first non-None result).

    :return: a sequence of :class:`~kvpress_lab.presets.Preset`.

    .. versionadded:: 0.1
    """
