"""The plugin manager: loads plugins from the ``kvpress_lab`` entry-point group and indexes what they register.

Built-in strategies are plugins of the same group, declared in kvpress_lab's own ``pyproject.toml``.
Setting the environment variable ``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the built-ins.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pluggy

from kvpress_lab import hookspecs
from kvpress_lab.errors import DuplicateStrategyError, PluginError, UnknownStrategyError
from kvpress_lab.presets import Preset

__all__ = [
    "ENTRY_POINT_GROUP",
    "AUTOLOAD_ENV",
    "Role",
    "Registered",
    "Registry",
    "get_registry",
    "reload_registry",
    "available",
]

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
AUTOLOAD_ENV = "KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD"
DISTRIBUTION = "kvpress-lab"
#: Built-in plugin modules, used when kvpress_lab runs from a source tree without being installed.
BUILTIN_MODULES = {
    "executors": "kvpress_lab.executors",
    "allocators": "kvpress_lab.allocators",
    "scorers": "kvpress_lab.scorers",
    "strategies": "kvpress_lab.strategies",
}

Role = Literal["allocator", "scorer", "executor", "preset"]
ROLES: tuple[Role, ...] = ("allocator", "scorer", "executor", "preset")
_HOOKS: dict[Role, str] = {
    "allocator": "kvpress_lab_register_allocators",
    "scorer": "kvpress_lab_register_scorers",
    "executor": "kvpress_lab_register_executors",
    "preset": "kvpress_lab_register_presets",
}
_METHODS: dict[Role, tuple[str, ...]] = {
    "allocator": ("allocate",),
    "scorer": ("score",),
    "executor": ("select", "build_layer"),
}
_SCOPES = ("static", "global")


@dataclass(frozen=True)
class Registered:
    """One registered strategy or preset and the plugin that provided it."""

    role: Role
    name: str
    obj: Any
    plugin: str

    @property
    def summary(self) -> str:
        """First line of the strategy's docstring (or the preset's description)."""
        if isinstance(self.obj, Preset):
            return self.obj.description
        doc = (self.obj.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def autoload_enabled() -> bool:
    """Whether third-party plugins are loaded (``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD`` unset or ``0``)."""
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")


class Registry:
    """Every strategy and preset registered by the loaded plugins, by role and name.

    Parameters
    ----------
    extra_plugins : Iterable[tuple[str, object]]
        ``(name, plugin)`` pairs: plugin objects registered in addition to the entry points (tests, notebooks).
    autoload : bool or None
        Load third-party entry points; ``None`` reads ``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD``.
    """

    def __init__(self, extra_plugins: Iterable[tuple[str, object]] = (), *, autoload: bool | None = None):
        self.autoload = autoload_enabled() if autoload is None else autoload
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self._load_entry_points()
        for name, plugin in extra_plugins:
            self._register(plugin, name)
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:  # a misspelled hook name
            raise PluginError(
                f"Plugin {self.manager.get_name(exc.plugin)!r}: {exc}; kvpress_lab's hooks are: {', '.join(_HOOKS.values())}."
            ) from exc
        self._entries: dict[Role, dict[str, Registered]] = {role: {} for role in ROLES}
        for role in ROLES:
            self._collect(role)

    # -- loading -----------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        builtin_found = False
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            is_builtin = _normalise(dist) == DISTRIBUTION
            builtin_found |= is_builtin
            if not is_builtin and not self.autoload:
                continue
            name = f"{dist}:{ep.name}"
            if self.manager.get_plugin(name) is None:
                try:
                    plugin = ep.load()
                except Exception as exc:
                    if is_builtin:
                        raise
                    raise PluginError(
                        f"Plugin {name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) failed to load: "
                        f"{type(exc).__name__}: {exc}. Fix or uninstall {dist!r}, or set {AUTOLOAD_ENV}=1 "
                        "to load only the built-ins."
                    ) from exc
                self._register(plugin, name)
        if not builtin_found:  # running from a source tree that was never installed
            for short, module in BUILTIN_MODULES.items():
                self._register(importlib.import_module(module), f"{DISTRIBUTION}:{short}")

    def _register(self, plugin: object, name: str) -> None:
        try:
            self.manager.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # hookimpl signature not matching its spec
            raise PluginError(f"Plugin {name!r} does not match kvpress_lab's hook specifications: {exc}") from exc

    def _collect(self, role: Role) -> None:
        hook = getattr(self.manager.hook, _HOOKS[role])
        # get_hookimpls() lists implementations in registration order (pluggy *calls* them in
        # reverse); walk them in that order so a clash names the first-registered plugin first.
        for impl in hook.get_hookimpls():
            returned = impl.function()
            if returned is None:
                continue
            if isinstance(returned, (str, bytes)) or not isinstance(returned, Iterable):
                raise PluginError(
                    f"Plugin {impl.plugin_name!r}: {_HOOKS[role]}() must return a list, got {type(returned).__name__}."
                )
            for obj in returned:
                name = _validate(role, obj, impl.plugin_name)
                previous = self._entries[role].get(name)
                if previous is not None:
                    raise DuplicateStrategyError(role, name, previous.plugin, impl.plugin_name)
                self._entries[role][name] = Registered(role, name, obj, impl.plugin_name)

    # -- queries -----------------------------------------------------------------------------

    def names(self, role: Role) -> list[str]:
        """Sorted names registered for ``role``."""
        return sorted(self._entries[_check_role(role)])

    def get(self, role: Role, name: str) -> Registered:
        """Look ``name`` up; raise :class:`UnknownStrategyError` (with a suggestion) when absent."""
        entries = self._entries[_check_role(role)]
        if not isinstance(name, str) or name not in entries:
            raise UnknownStrategyError(role, str(name), entries)
        return entries[name]

    def __iter__(self) -> Iterator[Registered]:
        for role in ROLES:
            yield from (self._entries[role][n] for n in sorted(self._entries[role]))

    def plugins(self) -> list[str]:
        """Names of the loaded plugins, e.g. ``"kvpress-lab:scorers"``."""
        return sorted(name for name, _ in self.manager.list_name_plugin())


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}.")
    return role  # type: ignore[return-value]


def _validate(role: Role, obj: Any, plugin: str) -> str:
    where = f"Plugin {plugin!r} registered {obj!r} as a {role}"
    if role == "preset":
        if not isinstance(obj, Preset):
            raise PluginError(f"{where}, but presets must be kvpress_lab.Preset instances.")
        return obj.name
    if not isinstance(obj, type) or not dataclasses.is_dataclass(obj):
        raise PluginError(f"{where}, but strategies must be dataclass classes (their fields are the hyperparameters).")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not hookspecs.NAME_PATTERN.match(name):
        raise PluginError(f"{where} with name {name!r}; a class attribute `name` matching {hookspecs.NAME_PATTERN.pattern} is required.")
    for method in _METHODS[role]:
        if not callable(getattr(obj, method, None)):
            raise PluginError(f"{where}, but it has no `{method}` method required by the {role} protocol.")
    if role == "allocator" and getattr(obj, "scope", None) not in _SCOPES:
        raise PluginError(f"{where}; its class attribute `scope` must be one of {_SCOPES}, got {getattr(obj, 'scope', None)!r}.")
    return name


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reload_registry() -> Registry:
    """Rebuild the process-wide registry (after installing a plugin or changing the autoload switch)."""
    global _REGISTRY
    _REGISTRY = None
    return get_registry()


def available(role: Role | None = None) -> list[Registered]:
    """Every registered strategy and preset (or those of one ``role``) with the plugin that provided it.

    >>> sorted({entry.role for entry in available()})
    ['allocator', 'executor', 'preset', 'scorer']
    """
    registry = get_registry()
    if role is None:
        return list(registry)
    return [registry.get(role, name) for name in registry.names(role)]
