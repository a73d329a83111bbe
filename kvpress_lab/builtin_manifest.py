"""The built-in strategies and presets, described in a JSON file, so ``kvpress-lab list`` imports no torch.

The built-in plugin modules define tensor code and import torch (~2-3 s). ``kvpress-lab list``
only needs what each strategy *is* (role, name, plugin, summary, hyperparameters and their
defaults, an allocator's scope, a preset's recipe), so it reads those from
``builtin_manifest.json``, generated from the live registry by::

    python -m kvpress_lab.builtin_manifest

The file records a SHA-256 digest of the built-in plugin sources (every ``.py`` file of
``kvpress_lab.allocators``, ``.scorers``, ``.executors`` and ``.strategies``). When the sources
no longer match it (a strategy was edited or added and the file not regenerated), the manifest
is ignored and ``list`` builds the live registry as before: slower, never stale.
``tests/test_builtin_manifest.py`` fails until the file is regenerated, and also compares its
content with the live registry (which catches a default defined outside those folders).

Third-party plugins are always loaded live (their entry points are imported, as ``list`` always
did), and a name clash with a built-in raises :class:`~kvpress_lab.DuplicateStrategyError` as
the registry would. Their import time is their own: a plugin that imports torch at module level
makes ``list`` import torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvpress_lab.errors import DuplicateStrategyError
from kvpress_lab.presets import Preset
from kvpress_lab.registry import BUILTIN_MODULES, DISTRIBUTION, ROLES, Registered, Registry

__all__ = ["MANIFEST_PATH", "Listing", "describe", "fast_listing", "generate", "live_listing", "load", "sources_digest", "write"]

MANIFEST_PATH = Path(__file__).with_name("builtin_manifest.json")
#: Version of the file's layout; a file of another version is ignored.
FORMAT_VERSION = 1
#: Plugin names of the built-ins start with this.
BUILTIN_PREFIX = f"{DISTRIBUTION}:"


def describe(entry: Registered) -> dict[str, Any]:
    """JSON-ready description of one registered strategy or preset (what ``list --json`` prints).

    A default that JSON cannot hold is written as its ``repr``.
    """
    row: dict[str, Any] = {"role": entry.role, "name": entry.name, "plugin": entry.plugin, "summary": entry.summary}
    if isinstance(entry.obj, Preset):
        row["recipe"] = dict(entry.obj.recipe)
        row["paper"] = entry.obj.paper
    else:
        if entry.role == "allocator":
            row["scope"] = getattr(entry.obj, "scope", None)
        row["parameters"] = {f.name: _default(f) for f in dataclasses.fields(entry.obj) if f.init}
    return json.loads(json.dumps(row, default=repr))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None  # required parameter (no default)


@dataclass(frozen=True)
class Listing:
    """What ``kvpress-lab list`` prints: rows in registry order, the plugins and the autoload switch.

    Attributes
    ----------
    rows : tuple of dict
        :func:`describe` rows, by role (allocator, scorer, executor, preset) then name.
    plugins : tuple of str
        Sorted plugin names (``"kvpress-lab:scorers"``, ...).
    autoload : bool
        Whether third-party plugins were loaded.
    from_manifest : bool
        Whether the built-ins came from the manifest (``False``: the live registry).
    """

    rows: tuple[dict[str, Any], ...]
    plugins: tuple[str, ...]
    autoload: bool
    from_manifest: bool


def _ordered(rows: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    return tuple(sorted(rows, key=lambda row: (ROLES.index(row["role"]), row["name"])))


def live_listing(registry: Registry) -> Listing:
    """The listing of a built registry."""
    return Listing(tuple(describe(e) for e in registry), tuple(registry.plugins()), registry.autoload, False)


def sources_digest() -> str:
    """SHA-256 over the built-in plugin sources: each ``.py`` file's package-relative name and bytes.

    The packages are located with ``importlib.util.find_spec``, which imports none of them.
    """
    digest = hashlib.sha256()
    for module in BUILTIN_MODULES.values():
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"Cannot locate the built-in plugin package {module!r}.")
        for folder in map(Path, spec.submodule_search_locations):
            for path in sorted(folder.rglob("*.py")):
                digest.update(f"{module}/{path.relative_to(folder).as_posix()}\0".encode())
                digest.update(path.read_bytes())
                digest.update(b"\0")
    return digest.hexdigest()


def generate(registry: Registry | None = None) -> dict[str, Any]:
    """The manifest of ``registry``'s built-in entries (default: a fresh registry without third-party plugins)."""
    registry = Registry(autoload=False) if registry is None else registry
    rows = [describe(e) for e in registry if e.plugin.startswith(BUILTIN_PREFIX)]
    plugins = [name for name in registry.plugins() if name.startswith(BUILTIN_PREFIX)]
    return {"format_version": FORMAT_VERSION, "sources_sha256": sources_digest(), "plugins": plugins, "entries": rows}


def write(path: Path = MANIFEST_PATH) -> dict[str, Any]:
    """Regenerate the manifest file from the live registry; returns what was written."""
    manifest = generate()
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def load(path: Path = MANIFEST_PATH) -> dict[str, Any] | None:
    """The manifest, or ``None`` when it is missing, of another format, or older than the sources."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        return None
    if data.get("sources_sha256") != sources_digest():
        return None
    return data


def fast_listing(third_party: Registry | None = None, path: Path = MANIFEST_PATH) -> Listing | None:
    """Built-ins from the manifest plus the third-party plugins, loaded live; ``None`` when the manifest is unusable.

    ``None`` (see :func:`load`): the caller lists the live registry instead.

    Parameters
    ----------
    third_party : Registry or None
        The registry of non-built-in plugins; default ``Registry(builtins=False)`` (honours
        ``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD``).
    """
    manifest = load(path)
    if manifest is None:
        return None
    third_party = Registry(builtins=False) if third_party is None else third_party
    builtins = {(row["role"], row["name"]): row for row in manifest["entries"]}
    others = [describe(e) for e in third_party]
    for row in others:
        clash = builtins.get((row["role"], row["name"]))
        if clash is not None:
            raise DuplicateStrategyError(row["role"], row["name"], clash["plugin"], row["plugin"])
    plugins = tuple(sorted({*manifest["plugins"], *third_party.plugins()}))
    return Listing(_ordered([*builtins.values(), *others]), plugins, third_party.autoload, True)


if __name__ == "__main__":
    written = write()
    print(f"wrote {MANIFEST_PATH} ({len(written['entries'])} built-in entries, sources {written['sources_sha256'][:12]})")
