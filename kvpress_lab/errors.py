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
    "ConfigurationError",
    "UnsupportedCacheError",
    "CacheReuseError",
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
    """A recipe named a strategy (or preset) that no loaded plugin registered.

    Parameters
    ----------
    kind : str
        The role looked up (``"scorer"``, ``"preset"``, ...).
    name : str
        The name not found.
    available : Iterable[str]
        The names registered for ``kind``, listed in the message.
    autoload_note : str or None
        Set by the registry when third-party plugin autoload is off: a sentence saying so and
        how to turn it back on, appended to the message. ``None`` (nothing added) when it is on.
    """

    def __init__(self, kind: str, name: str, available: Iterable[str], *, autoload_note: str | None = None):
        available = sorted(available)
        suggestion = closest_match(name, available)
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        listing = ", ".join(repr(a) for a in available) or "(none)"
        note = f" {autoload_note}" if autoload_note else ""
        super().__init__(f"Unknown {kind} {name!r}.{hint} Available {kind}s: {listing}.{note}")
        self.kind = kind
        self.name = name
        self.available = available
        self.suggestion = suggestion
        self.autoload_note = autoload_note


class DuplicateStrategyError(KVPressLabError, ValueError):
    """Two plugins registered the same name for the same role.

    ``remedy`` replaces the closing advice of the message (the registry gives one for
    in-process registrations, which are not uninstalled but unregistered).
    """

    def __init__(self, kind: str, name: str, first_plugin: str, second_plugin: str, *, remedy: str | None = None):
        if remedy is None:
            remedy = (
                "Rename one of them, or uninstall one of the two plugins "
                "(set KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD=1 to load only the built-ins)."
            )
        super().__init__(
            f"The {kind} name {name!r} is registered twice: by plugin {first_plugin!r} and by plugin "
            f"{second_plugin!r}. {remedy}"
        )
        self.kind = kind
        self.name = name
        self.plugins = (first_plugin, second_plugin)


class ConfigurationError(KVPressLabError, ValueError):
    """A setting kvpress_lab reads, such as an environment variable, has a value it does not understand."""


class PluginError(KVPressLabError, TypeError):
    """A plugin registered something that does not follow the role's contract."""


class UnsupportedModelError(KVPressLabError, TypeError):
    """The model family has no query-recomputation adapter."""


class UnsupportedCacheError(KVPressLabError, TypeError):
    """Inside ``recipe.apply``, a run the engine cannot compress (no cache, a static, quantized or
    offloaded cache, chunked prefill): refused rather than run uncompressed."""


class CacheReuseError(KVPressLabError, ValueError):
    """A compressed cache used with inputs it does not belong to (already extended by an earlier
    ``generate``, another prompt, batch size or model)."""
