"""The plugin manager: loads plugins from the ``kvpress_lab`` entry-point group and indexes what they register.

Built-in strategies are plugins of the same group, declared in kvpress_lab's own ``pyproject.toml``.
Setting the environment variable ``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD`` to ``1``, ``true``,
``yes`` or ``on`` loads only the built-ins (``0``, ``false``, ``no``, ``off``, empty or unset load
every installed plugin; any other value is an error).

Strategies can also be registered in the running process, without an entry point, by
:func:`register` and :func:`register_plugin` (see :doc:`/howto/register-in-process`). They are
validated exactly like a plugin's, kept across :func:`reload_registry` and removed by
:func:`unregister` / :func:`unregister_plugin`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pluggy

from kvpress_lab import capabilities, hookspecs
from kvpress_lab.errors import ConfigurationError, DuplicateStrategyError, PluginError, UnknownStrategyError
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
    "register",
    "register_plugin",
    "unregister",
    "unregister_plugin",
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
#: Values of ``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD`` (case-insensitive, surrounding whitespace ignored).
_DISABLING = ("1", "true", "yes", "on")
_KEEPING = ("", "0", "false", "no", "off")
#: Prefix of the plugin names given to in-process registrations.
IN_PROCESS_PREFIX = "in-process:"


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
    """Whether third-party plugins are loaded, read from ``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD``.

    ``1``, ``true``, ``yes`` and ``on`` disable autoload; ``0``, ``false``, ``no``, ``off``, an
    empty value or no variable keep it (case-insensitive, surrounding whitespace ignored). Any
    other value raises :class:`~kvpress_lab.ConfigurationError` (a :class:`ValueError`) naming the
    variable, the value and the accepted values.
    """
    raw = os.environ.get(AUTOLOAD_ENV, "")
    value = raw.strip().lower()
    if value in _DISABLING:
        return False
    if value in _KEEPING:
        return True
    raise ConfigurationError(
        f"{AUTOLOAD_ENV}={raw!r} is not understood. Set it to {', '.join(_DISABLING)} to load only "
        f"kvpress_lab's built-in plugins, or to {', '.join(v for v in _KEEPING if v)}, empty or unset "
        "to load every installed plugin (case-insensitive)."
    )


class Registry:
    """Every strategy and preset registered by the loaded plugins, by role and name.

    Parameters
    ----------
    extra_plugins : Iterable[tuple[str, object]]
        ``(name, plugin)`` pairs: plugin objects registered in addition to the entry points (tests, notebooks).
    autoload : bool or None
        Load third-party entry points; ``None`` reads ``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD``
        (an unrecognised value raises :class:`~kvpress_lab.ConfigurationError`).
    builtins : bool
        Load kvpress_lab's own plugins (default). ``False`` loads only the others, for
        ``kvpress-lab list``, which reads the built-ins from :mod:`kvpress_lab.builtin_manifest`;
        clashes with built-in names are then not detected here.
    """

    def __init__(self, extra_plugins: Iterable[tuple[str, object]] = (), *, autoload: bool | None = None,
                 builtins: bool = True):
        self.builtins = bool(builtins)
        if autoload is None:
            self.autoload = autoload_enabled()
            why = f"{AUTOLOAD_ENV}={os.environ.get(AUTOLOAD_ENV, '').strip()}"
            remedy = "unset it to load installed plugins"
        else:
            self.autoload = bool(autoload)
            why, remedy = "autoload=False", "build the registry with autoload=True to load installed plugins"
        #: Appended to :class:`UnknownStrategyError` messages while third-party plugins are off.
        self._autoload_note = None if self.autoload else f"Autoload is off: third-party plugins are not loaded ({why}); {remedy}."
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self._load_entry_points()
        for name, plugin in extra_plugins:
            self._register(plugin, name)
        self._check_pending()
        self._entries: dict[Role, dict[str, Registered]] = {role: {} for role in ROLES}
        for role in ROLES:
            hook = getattr(self.manager.hook, _HOOKS[role])
            self._entries[role] = self._collect(role, hook.get_hookimpls())

    # -- loading -----------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        builtin_found = False
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            is_builtin = _normalise(dist) == DISTRIBUTION
            builtin_found |= is_builtin
            if (not is_builtin and not self.autoload) or (is_builtin and not self.builtins):
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
        if not builtin_found and self.builtins:  # running from a source tree that was never installed
            for short, module in BUILTIN_MODULES.items():
                self._register(importlib.import_module(module), f"{DISTRIBUTION}:{short}")

    def _register(self, plugin: object, name: str) -> None:
        try:
            self.manager.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # hookimpl signature not matching its spec
            raise PluginError(f"Plugin {name!r} does not match kvpress_lab's hook specifications: {exc}") from exc

    def _check_pending(self) -> None:
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:  # a misspelled hook name
            raise PluginError(
                f"Plugin {self.manager.get_name(exc.plugin)!r}: {exc}; kvpress_lab's hooks are: {', '.join(_HOOKS.values())}."
            ) from exc

    def _collect(self, role: Role, impls: Iterable[Any]) -> dict[str, Registered]:
        """Validate what ``impls`` return for ``role``; a name clash with a registered one or between them raises."""
        existing = self._entries[role]
        found: dict[str, Registered] = {}
        # get_hookimpls() lists implementations in registration order (pluggy *calls* them in
        # reverse); walk them in that order so a clash names the first-registered plugin first.
        for impl in impls:
            returned = impl.function()
            if returned is None:
                continue
            if isinstance(returned, (str, bytes, Mapping)) or not isinstance(returned, Iterable):
                what = " (iterating a mapping gives its keys: return a list of the classes)" if isinstance(returned, Mapping) else ""
                raise PluginError(
                    f"Plugin {impl.plugin_name!r}: {_HOOKS[role]}() must return a list, got {type(returned).__name__}{what}."
                )
            for obj in returned:
                name = _validate(role, obj, impl.plugin_name)
                previous = existing.get(name) or found.get(name)
                if previous is not None:
                    raise DuplicateStrategyError(role, name, previous.plugin, impl.plugin_name)
                found[name] = Registered(role, name, obj, impl.plugin_name)
        return found

    def add_plugin(self, plugin: object, name: str) -> list[Registered]:
        """Register one more plugin object under ``name``, validated like an entry point's.

        Everything is checked first (hook names and signatures, what each hook returns, name
        clashes): on any error the registry is left unchanged. This is what
        :func:`register_plugin` does to the process-wide registry; use it on a private
        :class:`Registry`.

        Returns
        -------
        list[Registered]
            What the plugin registered, in role order.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"A plugin name must be a non-empty string, got {name!r}.")
        if self.manager.get_plugin(name) is not None or self.manager.is_registered(plugin):
            registered_as = self.manager.get_name(plugin) if self.manager.is_registered(plugin) else name
            raise ValueError(f"A plugin named {registered_as!r} is already registered; plugins: {', '.join(self.plugins())}.")
        self._register(plugin, name)
        try:
            self._check_pending()
            found: dict[Role, dict[str, Registered]] = {}
            for role in ROLES:
                hook = getattr(self.manager.hook, _HOOKS[role])
                found[role] = self._collect(role, [impl for impl in hook.get_hookimpls() if impl.plugin_name == name])
        except BaseException:
            self.manager.unregister(name=name)
            raise
        for role in ROLES:  # copy on write: a reader iterating the previous mapping is not disturbed
            self._entries[role] = {**self._entries[role], **found[role]}
        return [entry for role in ROLES for entry in found[role].values()]

    def remove_plugin(self, name: str) -> list[Registered]:
        """Unregister the plugin ``name`` and everything it registered; returns what was removed."""
        if self.manager.get_plugin(name) is None:
            raise ValueError(f"No plugin named {name!r} is registered; plugins: {', '.join(self.plugins())}.")
        self.manager.unregister(name=name)
        removed = [e for role in ROLES for e in self._entries[role].values() if e.plugin == name]
        for role in ROLES:  # copy on write, as in add_plugin
            self._entries[role] = {n: e for n, e in self._entries[role].items() if e.plugin != name}
        return removed

    # -- queries -----------------------------------------------------------------------------

    def names(self, role: Role) -> list[str]:
        """Sorted names registered for ``role``."""
        return sorted(self._entries[_check_role(role)])

    def get(self, role: Role, name: str) -> Registered:
        """Look ``name`` up; raise :class:`UnknownStrategyError` (with a suggestion) when absent.

        When third-party plugin autoload is off, the error says so and how to turn it back on.
        """
        entries = self._entries[_check_role(role)]
        if not isinstance(name, str) or name not in entries:
            raise UnknownStrategyError(role, str(name), entries, autoload_note=self._autoload_note)
        return entries[name]

    def __iter__(self) -> Iterator[Registered]:
        for role in ROLES:
            entries = self._entries[role]
            yield from (entries[n] for n in sorted(entries))

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
    scope = getattr(obj, "scope", None) if role == "allocator" else None
    if role == "allocator" and scope not in _SCOPES:
        raise PluginError(f"{where}; its class attribute `scope` must be one of {_SCOPES}, got {scope!r}.")
    table = capabilities.by_role(role)
    table.check_class(obj, plugin)
    if scope == "global" and table.of(obj, "layer_statistic") is None and table.of(obj, "scores_statistic") is None:
        raise PluginError(f"{where} of scope 'global', which defines neither layer_statistic(view) nor "
                          "scores_statistic(scores, forced, valid): the engine would have no statistic to hand it.")
    return name


_REGISTRY: Registry | None = None
#: In-process plugins (name -> plugin object), in registration order: added to every build.
_IN_PROCESS: dict[str, object] = {}
#: Guards building the process-wide registry and every change to it or to ``_IN_PROCESS``.
_LOCK = threading.RLock()


def get_registry() -> Registry:
    """The process-wide registry, built on first use (in-process registrations included)."""
    global _REGISTRY
    registry = _REGISTRY
    if registry is not None:
        return registry
    with _LOCK:
        if _REGISTRY is None:
            _REGISTRY = _build()
        return _REGISTRY


def process_registry_in_use() -> bool:
    """Whether the process-wide registry is built or in-process registrations exist (listing it is then free)."""
    return _REGISTRY is not None or bool(_IN_PROCESS)


def reload_registry() -> Registry:
    """Rebuild the process-wide registry (after installing a plugin or changing the autoload switch).

    Strategies registered in-process (:func:`register`, :func:`register_plugin`) are kept:
    they are validated again, against the newly loaded plugins.
    """
    global _REGISTRY
    with _LOCK:
        _REGISTRY = None
        _REGISTRY = _build()
        return _REGISTRY


def _build() -> Registry:
    try:
        return Registry(extra_plugins=list(_IN_PROCESS.items()))
    except DuplicateStrategyError as exc:
        raise _in_process_clash(exc) from None


def _in_process_clash(exc: DuplicateStrategyError, adding: str | None = None) -> DuplicateStrategyError:
    """``exc`` with advice for in-process registrations (``adding``: the plugin being registered)."""
    first, second = exc.plugins
    kind, name = exc.kind, exc.name
    if first in _IN_PROCESS:
        remedy = (
            f"Remove the earlier one first with kvpress_lab.unregister({name!r}, {kind!r}), pass replace=True "
            "to kvpress_lab.register(), or rename one of them."
        )
    elif first == second:
        remedy = f"Plugin {first!r} returns two {kind}s of that name; rename one of them."
    elif second == adding:
        remedy = f"Give yours another name: in-process registrations never replace the {kind}s of a plugin such as {first!r}."
    elif second in _IN_PROCESS:
        remedy = (
            f"Rename the in-process one: remove it with kvpress_lab.unregister({name!r}, {kind!r}) and register "
            f"it under another name, or uninstall plugin {first!r}."
        )
    else:
        return exc
    return DuplicateStrategyError(kind, name, first, second, remedy=remedy)


class _OneStrategy:
    """The plugin behind one :func:`register` call: implements the role's hook, returning ``[obj]``."""

    def __init__(self, role: Role, name: str, obj: Any):
        self.role = role
        self.name = name
        self.obj = obj
        setattr(self, _HOOKS[role], hookspecs.hookimpl(lambda: [obj]))

    def __repr__(self) -> str:
        return f"<in-process {self.role} {self.obj!r}>"


def register(obj: Any = None, /, *, role: Role | None = None, replace: bool = False) -> Any:
    """Register a strategy class or a :class:`~kvpress_lab.Preset` in this process, without an entry point.

    It is validated exactly like a plugin's (a dataclass with a ``name`` matching the name
    pattern and the role's methods, an allocator's ``scope``, a name not registered yet) and
    registered by a plugin named ``"in-process:<role>:<name>"``. Use it as a decorator, with or
    without arguments; it returns ``obj`` unchanged.

    Registrations belong to this process: they are kept across :func:`reload_registry` and
    removed by :func:`unregister`; other processes (workers, ``kvpress-lab`` commands) must
    register again, or load a plugin from an entry point. See :doc:`/howto/register-in-process`.

    Parameters
    ----------
    obj : type or Preset
        The strategy class or preset. Omitted: returns a decorator taking it.
    role : {"allocator", "scorer", "executor", "preset"} or None
        ``None`` infers it: a :class:`~kvpress_lab.Preset` is a preset, a class with ``allocate``
        an allocator, with ``score`` a scorer, with ``select`` and ``build_layer`` an executor.
        When none or several of these match, :class:`~kvpress_lab.PluginError` (a
        :class:`TypeError`) asks for ``role``.
    replace : bool
        Replace an earlier in-process registration of the same role and name (a notebook cell run
        again) instead of raising :class:`~kvpress_lab.DuplicateStrategyError`. A plugin's
        strategies are never replaced.

    Returns
    -------
    type or Preset
        ``obj`` itself (a decorator when ``obj`` is omitted).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from typing import ClassVar
    >>> @register
    ... @dataclass(frozen=True)
    ... class DocScorer:
    ...     name: ClassVar[str] = "doc_scorer"
    ...     def score(self, view):
    ...         raise NotImplementedError
    >>> get_registry().get("scorer", "doc_scorer").plugin
    'in-process:scorer:doc_scorer'
    >>> unregister("doc_scorer", "scorer")
    """
    if obj is None:
        def decorator(target: Any) -> Any:
            return register(target, role=role, replace=replace)

        return decorator
    role = _infer_role(obj) if role is None else _check_role(role)
    name = _validate(role, obj, IN_PROCESS_PREFIX.rstrip(":"))
    plugin_name = f"{IN_PROCESS_PREFIX}{role}:{name}"
    with _LOCK:
        registry = get_registry()
        previous = registry._entries[role].get(name)
        if previous is not None and not (replace and previous.plugin in _IN_PROCESS and _provides_only(registry, previous)):
            raise _in_process_clash(DuplicateStrategyError(role, name, previous.plugin, plugin_name), adding=plugin_name)
        old = (previous.plugin, _IN_PROCESS[previous.plugin]) if previous is not None else None
        if old is not None:
            unregister_plugin(old[0])
        try:
            register_plugin(_OneStrategy(role, name, obj), plugin_name)
        except BaseException:
            if old is not None:
                register_plugin(old[1], old[0])
            raise
    return obj


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (a module, a class instance...) in this process, without an entry point.

    Its hooks (:ref:`hooks`) are called at once and what they return is validated exactly like
    an entry-point plugin's; on any error nothing is registered. Like :func:`register`, the
    plugin is kept across :func:`reload_registry`, and belongs to this process only.

    Parameters
    ----------
    plugin : object
        Anything with functions marked by :data:`~kvpress_lab.hookspecs.hookimpl`.
    name : str or None
        The plugin's name in error messages and listings. Default:
        ``"in-process:<module or class name>"``.

    Returns
    -------
    str
        The plugin's name, for :func:`unregister_plugin`.
    """
    if name is None:
        name = IN_PROCESS_PREFIX + (getattr(plugin, "__name__", None) or type(plugin).__name__)
    with _LOCK:
        if name in _IN_PROCESS:
            raise ValueError(
                f"A plugin named {name!r} is already registered in this process; remove it first with "
                f"kvpress_lab.unregister_plugin({name!r}), or pass another name."
            )
        registry = get_registry()
        try:
            registry.add_plugin(plugin, name)
        except DuplicateStrategyError as exc:
            raise _in_process_clash(exc, adding=name) from None
        _IN_PROCESS[name] = plugin
    return name


def unregister(name: str, role: Role) -> None:
    """Remove the strategy or preset ``name`` of ``role`` that :func:`register` registered.

    Raises :class:`~kvpress_lab.UnknownStrategyError` when nothing of that name is registered,
    and :class:`ValueError` for a plugin's strategy (only in-process registrations can be removed)
    or for one of several strategies of a :func:`register_plugin` plugin
    (use :func:`unregister_plugin`).
    """
    role = _check_role(role)
    with _LOCK:
        for plugin_name, plugin in _IN_PROCESS.items():
            if isinstance(plugin, _OneStrategy) and (plugin.role, plugin.name) == (role, name):
                unregister_plugin(plugin_name)
                return
        entry = get_registry().get(role, name)
        if entry.plugin not in _IN_PROCESS:
            raise ValueError(
                f"The {role} {name!r} was registered by plugin {entry.plugin!r}, from an entry point; only in-process "
                f"registrations can be unregistered. Uninstall the plugin, or set {AUTOLOAD_ENV}=1 to load only the built-ins."
            )
        together = [f"{e.role} {e.name!r}" for e in get_registry() if e.plugin == entry.plugin and e is not entry]
        raise ValueError(
            f"The {role} {name!r} was registered by plugin {entry.plugin!r} together with {', '.join(together)}; "
            f"remove the whole plugin with kvpress_lab.unregister_plugin({entry.plugin!r})."
        )


def unregister_plugin(name: str) -> None:
    """Remove the in-process plugin ``name`` (see :func:`register_plugin`) and everything it registered."""
    with _LOCK:
        if name not in _IN_PROCESS:
            listing = ", ".join(repr(n) for n in _IN_PROCESS) or "(none)"
            raise ValueError(f"No in-process plugin named {name!r}; in-process plugins: {listing}.")
        del _IN_PROCESS[name]
        registry = _REGISTRY
        if registry is not None and registry.manager.get_plugin(name) is not None:
            registry.remove_plugin(name)


def _provides_only(registry: Registry, entry: Registered) -> bool:
    return all(e is entry for e in registry if e.plugin == entry.plugin)


def _infer_role(obj: Any) -> Role:
    if isinstance(obj, Preset):
        return "preset"
    matches = [role for role, methods in _METHODS.items() if all(callable(getattr(obj, m, None)) for m in methods)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise PluginError(
            f"kvpress_lab.register() cannot tell which role {obj!r} plays: it has the methods of "
            f"{' and '.join(f'a {r} ({_METHODS[r][0]})' for r in matches)}; pass role=... ({', '.join(ROLES)})."
        )
    raise PluginError(
        f"kvpress_lab.register() cannot tell which role {obj!r} plays: it is no Preset and has none of an allocator's "
        "`allocate`, a scorer's `score` or an executor's `select` and `build_layer`; define the role's methods, "
        f"or pass role=... ({', '.join(ROLES)})."
    )


def available(role: Role | None = None) -> list[Registered]:
    """Every registered strategy and preset (or those of one ``role``) with the plugin that provided it.

    >>> sorted({entry.role for entry in available()})
    ['allocator', 'executor', 'preset', 'scorer']
    """
    registry = get_registry()
    if role is None:
        return list(registry)
    return [registry.get(role, name) for name in registry.names(role)]
