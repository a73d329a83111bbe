"""Exceptions raised by kvpress_lab.

Every error speaks to the user: what happened, what was expected, what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "KVPressLabError",
    "UnknownStrategyError",
    "DuplicateStrategyError",
    "PluginError",
    "UnsupportedModelError",
    "closest_match",
]


class KVPressLabError(Exception):
    """Base class of every error raised on purpose by kvpress_lab."""


def closest_match(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to ``name`` or ``None`` when nothing is close.

    >>> closest_match("pyramd", ["pyramid", "uniform"])
    'pyramid'
    """
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


class UnknownStrategyError(KVPressLabError, ValueError):
    """A recipe named a strategy (or preset) that no loaded plugin registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        available = sorted(available)
        suggestion = closest_match(name, available)
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        listing = ", ".join(repr(a) for a in available) or "(none)"
        super().__init__(f"Unknown {kind} {name!r}.{hint} Available {kind}s: {listing}.")
        self.kind = kind
        self.name = name
        self.available = available
        self.suggestion = suggestion


class DuplicateStrategyError(KVPressLabError, ValueError):
    """Two plugins registered the same name for the same role."""

    def __init__(self, kind: str, name: str, first_plugin: str, second_plugin: str):
        super().__init__(
            f"The {kind} name {name!r} is registered twice: by plugin {first_plugin!r} and by plugin "
            f"{second_plugin!r}. Rename one of them, or uninstall one of the two plugins "
            "(set KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD=1 to load only the built-ins)."
        )
        self.kind = kind
        self.name = name
        self.plugins = (first_plugin, second_plugin)


class PluginError(KVPressLabError, TypeError):
    """A plugin registered something that does not follow the role's contract."""


class UnsupportedModelError(KVPressLabError, TypeError):
    """The model family has no query-recomputation adapter."""
