"""Reference pages generated from the code on every build, so they cannot drift from it.

On every build this extension generates the pages below as documents ``reference/_generated/*``.
They are written into the *build* folder (``<doctrees>/kvpress_generated/``), never into the
source tree, and registered with Sphinx as documents whose files live there, so the docs build
from a read-only checkout:

* ``strategies.rst`` — every allocator, scorer, executor and preset that ``kvpress_lab.available()``
  reports (built-ins *and* installed third-party plugins): a table per role, then one section per
  strategy with its plugin, its dataclass fields and defaults, its paper link and its docstring;
* ``hooks.rst`` — every hook specification of :mod:`kvpress_lab.hookspecs` with its calling
  convention read from pluggy's marker (first result or all results, historic);
* ``api/*.rst`` — one page per public module of ``kvpress_lab`` (found by walking the package), and
  ``api.rst``, their index.

Each ``*_rst`` function returns the page text and needs no Sphinx application, so tests call them
directly (``tests/test_docs.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "GENERATED_DIR",
    "strategies_rst",
    "hooks_rst",
    "api_pages",
    "generated_pages",
    "write_generated",
    "setup",
]

#: Docname prefix of the generated pages (their files live in the build folder, not in the source).
GENERATED_DIR = Path("reference") / "_generated"

_ROLE_TITLES = {"allocator": "Allocators", "scorer": "Scorers", "executor": "Executors", "preset": "Presets"}
_ROLE_METHODS = {"allocator": "allocate", "scorer": "score", "executor": "select, build_layer"}
_PAPER = re.compile(r"Based on\s+<?(https?://[^\s>)]+?)>?(?=[\s),;]|\.\s|\.$|$)")
#: Modules documented on pages of their own rather than in the API pages.
_OWN_PAGE_MODULES = {"kvpress_lab.hookspecs"}


# ---------------------------------------------------------------------------------------------
# reST helpers
# ---------------------------------------------------------------------------------------------


def _title(text: str, underline: str, overline: bool = False) -> str:
    rule = underline * max(len(text), 3)
    return f"{rule}\n{text}\n{rule}\n" if overline else f"{text}\n{rule}\n"


def _literal(text: Any) -> str:
    text = str(text)
    return f"``{text}``" if text else "—"


def _indent(text: str, spaces: int = 3) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def _table(header: list[str], rows: list[list[str]], widths: list[int] | None = None) -> str:
    out = [".. list-table::", "   :header-rows: 1"]
    if widths:
        out.append(f"   :widths: {' '.join(str(w) for w in widths)}")
    out.append("")
    for row in [header, *rows]:
        out.append(f"   * - {row[0]}")
        out.extend(f"     - {cell}" for cell in row[1:])
    return "\n".join(out) + "\n"


def _label(role: str, name: str) -> str:
    return f"{role}-{name}".replace("_", "-")


def _testsetup(modules: list[str]) -> str:
    """A doctest setup giving the page's ``>>>`` examples their modules' globals (as pytest does).

    ``use_module_globals`` is defined by ``doctest_global_setup`` in ``conf.py``.
    """
    code = "\n".join(f"use_module_globals({module!r})" for module in modules)
    return ".. testsetup:: *\n\n" + _indent(code) + "\n"


def paper_link(obj: Any) -> str:
    """The URL after "Based on" in ``obj``'s docstring (a preset's ``paper``), or ``""``."""
    paper = getattr(obj, "paper", None)
    if isinstance(paper, str):
        return paper
    match = _PAPER.search(inspect.getdoc(obj) or "")
    return match.group(1).rstrip(".") if match else ""


# ---------------------------------------------------------------------------------------------
# Registered strategies and presets
# ---------------------------------------------------------------------------------------------


def _field_rows(cls: type) -> list[list[str]]:
    rows = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            default = _literal(repr(field.default))
        elif field.default_factory is not dataclasses.MISSING:
            default = _literal(repr(field.default_factory()))
        else:
            default = "(required)"
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", repr(field.type))
        rows.append([_literal(field.name), _literal(kind), default])
    return rows


def _strategy_section(entry: Any) -> str:
    cls = entry.obj
    target = f"{cls.__module__}.{cls.__qualname__}"
    paper = paper_link(cls)
    facts = [f"* Registered as ``{entry.name}`` by plugin ``{entry.plugin}``."]
    if entry.role == "allocator":
        facts.append(f"* Scope: ``{getattr(cls, 'scope', '?')}``.")
    facts.append(f"* Use: ``Recipe({entry.role}={entry.name!r}, {entry.role}_kwargs={{...}})``.")
    if paper:
        facts.append(f"* Paper: {paper}")
    rows = _field_rows(cls)
    parameters = (
        _table(["parameter", "type", "default"], rows, [25, 25, 50]) if rows else "No hyperparameters.\n"
    )
    return "\n".join(
        [
            f".. _{_label(entry.role, entry.name)}:",
            "",
            _title(f"{entry.name}", "~"),
            "\n".join(facts),
            "",
            parameters,
            f".. autoclass:: {target}",
            "   :members:",
            "",
        ]
    )


def _preset_section(entry: Any) -> str:
    from kvpress_lab import Recipe

    preset = entry.obj
    resolved = Recipe.preset(entry.name).to_dict()
    facts = [f"* Registered by plugin ``{entry.plugin}``.", f"* {preset.description}."]
    if preset.paper:
        facts.append(f"* Paper: {preset.paper}")
    return "\n".join(
        [
            f".. _{_label('preset', entry.name)}:",
            "",
            _title(entry.name, "~"),
            "\n".join(facts),
            "",
            f"Arguments of ``Recipe.preset({entry.name!r})`` (override any of them as keyword arguments):",
            "",
            ".. code-block:: json",
            "",
            _indent(json.dumps(dict(preset.recipe), indent=2, sort_keys=True, default=repr)),
            "",
            "The resulting :class:`~kvpress_lab.Recipe`, defaults filled in:",
            "",
            ".. code-block:: json",
            "",
            _indent(json.dumps(resolved, indent=2, sort_keys=True, default=repr)),
            "",
        ]
    )


def strategies_rst(entries: list[Any] | None = None) -> str:
    """The "Registered strategies" page for ``entries`` (default: ``kvpress_lab.available()``)."""
    import kvpress_lab
    from kvpress_lab.registry import ROLES

    if entries is None:
        entries = kvpress_lab.available()
    plugins = sorted({e.plugin for e in entries})
    out = [
        ".. This page is generated by docs/_ext/kvpress_docs.py from kvpress_lab.available(); do not edit.",
        "",
        ".. _registered-strategies:",
        "",
        _title("Registered strategies and presets", "="),
        "Every allocator, scorer, executor and preset registered when these docs were built, read from",
        ":func:`kvpress_lab.available` (the same list as ``kvpress-lab list``). Third-party plugins",
        "installed in the build environment appear too, with the plugin that registered them.",
        f"Plugins loaded: {', '.join(_literal(p) for p in plugins) or '(none)'}.",
        "",
        "A strategy's parameters are its dataclass fields, passed through the recipe's",
        "``allocator_kwargs``, ``scorer_kwargs`` or ``executor_kwargs``.",
        "",
    ]
    modules: list[str] = []
    for role in ROLES:
        role_entries = [e for e in entries if e.role == role]
        out += [_title(_ROLE_TITLES[role], "-")]
        if not role_entries:
            out += ["(none registered)", ""]
            continue
        if role == "preset":
            rows = [
                [f":ref:`{e.name} <{_label(role, e.name)}>`", _literal(e.plugin), e.obj.description, e.obj.paper or "—"]
                for e in role_entries
            ]
            out += [_table(["name", "plugin", "description", "paper"], rows, [15, 20, 45, 20])]
            out += [_preset_section(e) for e in role_entries]
            continue
        rows = []
        for e in role_entries:
            row = [f":ref:`{e.name} <{_label(role, e.name)}>`", _literal(e.plugin)]
            if role == "allocator":
                row.append(_literal(getattr(e.obj, "scope", "?")))
            row += [e.summary or "—", paper_link(e.obj) or "—"]
            rows.append(row)
            modules.append(e.obj.__module__)
        header = ["name", "plugin", *(["scope"] if role == "allocator" else []), "summary", "paper"]
        widths = [15, 20, *([10] if role == "allocator" else []), 35, 20]
        out += [f"Each follows :class:`~kvpress_lab.protocols.{role.capitalize()}` "
                f"(method{'s' if ',' in _ROLE_METHODS[role] else ''} ``{_ROLE_METHODS[role]}``).", ""]
        out += [_table(header, rows, widths)]
        out += [_strategy_section(e) for e in role_entries]
    out += ["", _testsetup(sorted(set(modules)))]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------


def _hook_banners(module: ModuleType) -> dict[str, str]:
    """Map each function of ``module`` to the banner comment above it (pytest-style grouping)."""
    banner, after_rule, result = "", False, {}
    lines = inspect.getsource(module).splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if re.fullmatch(r"#\s*-{10,}", stripped):
            after_rule = True
            continue
        if after_rule and stripped.startswith("#") and i + 1 < len(lines) and re.fullmatch(r"#\s*-{10,}", lines[i + 1].strip()):
            banner = stripped.lstrip("# ").strip()
        after_rule = False
        match = re.match(r"def (\w+)\(", line)
        if match:
            result[match.group(1)] = banner
    return result


def hooks_rst() -> str:
    """The hook reference: module docs, then every hook spec grouped under its source banner."""
    from kvpress_lab import hookspecs

    marker = f"{hookspecs.PROJECT_NAME}_spec"
    specs = [
        (name, fn)
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if getattr(fn, marker, None) is not None
    ]
    specs.sort(key=lambda item: inspect.getsourcelines(item[1])[1])
    banners = _hook_banners(hookspecs)
    out = [
        ".. This page is generated by docs/_ext/kvpress_docs.py from kvpress_lab.hookspecs; do not edit.",
        "",
        ".. _hooks:",
        "",
        _title("Hooks", "="),
        ".. automodule:: kvpress_lab.hookspecs",
        "   :members:",
    ]
    excluded, _ = _exclusions(hookspecs)
    if excluded:
        out.append(f"   :exclude-members: {', '.join(excluded)}")
    out.append("")
    current = None
    for name, fn in specs:
        banner = banners.get(name) or "Hooks"
        if banner != current:
            out += [_title(banner, "-")]
            current = banner
        opts = getattr(fn, marker)
        if opts.get("firstresult"):
            convention = "stops at the first non-``None`` result"
        else:
            convention = "collects the results of every plugin (does not stop at the first)"
        if opts.get("historic"):
            convention += "; historic (replayed for plugins registered later)"
        out += [
            f".. autofunction:: kvpress_lab.hookspecs.{name}",
            "",
            f"   Calling convention (read from the pluggy marker): {convention}.",
            "",
        ]
    out += [_testsetup(["kvpress_lab.hookspecs"])]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# API pages
# ---------------------------------------------------------------------------------------------


def _shipped_packages() -> list[str]:
    """The packages ``pyproject.toml`` ships (``kvpress_lab.allocators`` lives in ``allocators/``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's dependency
        import tomli as tomllib
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    with open(pyproject, "rb") as handle:
        return list(tomllib.load(handle)["tool"]["setuptools"]["packages"])


def public_modules() -> list[str]:
    """Every shipped, non-private module of kvpress_lab (each package walked), sorted."""
    names = set()
    for package_name in _shipped_packages():
        package = importlib.import_module(package_name)
        names.add(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.add(info.name)
    return sorted(names)


_IMPORTED: list[bool] = []


def _import_public_modules() -> None:
    if not _IMPORTED:
        for module in public_modules():
            importlib.import_module(module)
        _IMPORTED.append(True)


def _public_home(name: str, obj: Any) -> str | None:
    """The shallowest ``kvpress_lab`` module whose ``__all__`` lists ``obj`` under ``name``.

    That is the path users import it from (``kvpress_lab.Recipe``, ``kvpress_lab.analysis.X``),
    so the object is documented there and cross-references to that path resolve.
    """
    homes = [
        module_name
        for module_name, module in list(sys.modules.items())
        if (module_name == "kvpress_lab" or module_name.startswith("kvpress_lab."))
        and name in (getattr(module, "__all__", None) or ())
        and getattr(module, name, None) is obj
    ]
    return min(homes, key=lambda m: (m.count("."), m)) if homes else None


def _exclusions(module: ModuleType) -> tuple[list[str], list[tuple[str, str]]]:
    """Members that ``module``'s page leaves out, and ``(name, where)`` for those defined here.

    Each object is documented once, so that cross-references are never ambiguous: at the
    shallowest module whose ``__all__`` exports it (its public import path), except registered
    strategy classes, which are documented on the strategies page.
    """
    import kvpress_lab

    _import_public_modules()  # so that _public_home sees every package's __all__
    registered = {id(e.obj): e for e in kvpress_lab.available() if isinstance(e.obj, type)}
    names = list(getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")])
    excluded, here = [], []
    for name in names:
        obj = getattr(module, name, None)
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if id(obj) in registered:
            excluded.append(name)
            if defined_here:
                entry = registered[id(obj)]
                here.append((name, f"{entry.role} ``{entry.name}``, see :ref:`{_label(entry.role, entry.name)}`"))
            continue
        if not (isinstance(obj, type) or inspect.isfunction(obj)):
            continue  # data is documented where its ``#:`` comment is, i.e. where it is assigned
        home = _public_home(name, obj) or module.__name__
        if home != module.__name__:
            excluded.append(name)
            if defined_here:
                role = "class" if isinstance(obj, type) else "func" if callable(obj) else "data"
                here.append((name, f"documented as :{role}:`{home}.{name}`"))
    return sorted(set(excluded)), here


def _api_page(name: str) -> str:
    module = importlib.import_module(name)
    excluded, here = _exclusions(module)
    lines = [
        ".. This page is generated by docs/_ext/kvpress_docs.py; do not edit.",
        "",
        _title(f"``{name}``", "="),
        f".. automodule:: {name}",
        "   :members:",
    ]
    if getattr(module, "__all__", None) is not None:
        lines.append("   :imported-members:")  # re-exports are documented at their public path
    if excluded:
        lines.append(f"   :exclude-members: {', '.join(excluded)}")
    lines.append("")
    if here:
        lines += ["Also defined here, documented elsewhere:", ""]
        lines += [f"* ``{member}``: {where}" for member, where in here]
        lines.append("")
    # Re-exported objects keep their defining module's globals for their examples.
    defining = {
        getattr(getattr(module, n, None), "__module__", None) or name
        for n in (getattr(module, "__all__", None) or ()) if n not in excluded
    }
    lines.append(_testsetup([*sorted(m for m in defining if m.startswith("kvpress_lab") and m != name), name]))
    return "\n".join(lines)


def api_pages() -> dict[str, str]:
    """``{relative path: text}`` of the API index and one page per public module."""
    modules = [m for m in public_modules() if m not in _OWN_PAGE_MODULES]
    pages = {f"api/{m}.rst": _api_page(m) for m in modules}
    index = [
        ".. This page is generated by docs/_ext/kvpress_docs.py; do not edit.",
        "",
        ".. _api:",
        "",
        _title("Python API", "="),
        "Every public module of ``kvpress_lab``, found by walking the package. Start with",
        ":mod:`kvpress_lab`, the names most code needs. Registered strategy classes are documented",
        "on :ref:`registered-strategies`; the hook specifications on :ref:`hooks`.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        *(f"   api/{m}" for m in modules),
        "",
    ]
    pages["api.rst"] = "\n".join(index)
    return pages


# ---------------------------------------------------------------------------------------------
# Writing the pages and the Sphinx hook
# ---------------------------------------------------------------------------------------------


def generated_pages() -> dict[str, str]:
    """Every generated page, ``{path relative to GENERATED_DIR: reST text}``."""
    pages = {"strategies.rst": strategies_rst(), "hooks.rst": hooks_rst()}
    pages.update(api_pages())
    return pages


def _write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it already holds it; ``True`` when written."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False  # unchanged pages keep their mtime, so incremental builds stay incremental
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return True


def write_generated(root: Path) -> dict[str, tuple[Path, bool]]:
    """Write every generated page under ``root``; ``{docname: (path, written)}``. Stale pages are removed."""
    pages = {}
    for relative, text in generated_pages().items():
        path = Path(root) / relative
        docname = (GENERATED_DIR / relative).with_suffix("").as_posix()
        pages[docname] = (path, _write_if_changed(path, text))
    keep = {path.resolve() for path, _ in pages.values()}
    for stale in Path(root).rglob("*.rst"):
        if stale.resolve() not in keep:
            stale.unlink()
    return pages


def _register_generated(app: Any, env: Any, added: set, changed: set, removed: set) -> list[str]:
    """``env-get-outdated``: generate the pages in the build folder and add them as documents.

    Sphinx finds documents by scanning the source folder; these live in ``<doctrees>/kvpress_generated``
    instead, so each is registered in the project's docname <-> path mapping (an absolute path:
    ``srcdir / path`` is then that path) right after the scan, and taken off the "removed" list the
    scan put it on. Returns the pages to (re-)read: new or changed ones.
    """
    project = app.project
    if not all(hasattr(project, name) for name in ("docnames", "_docname_to_path", "_path_to_docname")):
        from sphinx.errors import ExtensionError

        raise ExtensionError(
            "kvpress_docs registers generated pages through sphinx.project.Project's docname mapping, which this "
            "Sphinx version does not have; use the Sphinx version pinned in pyproject.toml's docs extra."
        )
    stale = Path(app.srcdir) / GENERATED_DIR
    if stale.is_dir() and any(stale.rglob("*.rst")):
        from sphinx.errors import ExtensionError

        raise ExtensionError(f"{stale} holds pages written by an older docs build into the source tree; delete it.")
    pages = write_generated(Path(app.doctreedir) / "kvpress_generated")
    outdated = []
    for docname, (path, written) in pages.items():
        project.docnames.add(docname)
        project._docname_to_path[docname] = path
        project._path_to_docname[path] = docname
        removed.discard(docname)
        if docname not in env.all_docs:
            added.add(docname)
        elif written:
            outdated.append(docname)
    for docname in list(removed):  # a page generated by an earlier build that no longer exists
        if docname.startswith(GENERATED_DIR.as_posix() + "/"):
            continue
    return outdated


def _resolve_short_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``:class:`Selection``` written inside kvpress_lab to its one documented target.

    Sphinx resolves an unqualified name only against the current module (and type fields, which
    search every module); docstrings here often name a class of another module without its
    package (``Recipe``, ``Selection``). When exactly one documented ``kvpress_lab`` object of a
    matching type ends with ``.<name>``, link it; otherwise leave the reference dangling so that
    nitpicky mode reports it.
    """
    from sphinx.util.nodes import make_refnode

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target:
        return None
    domain = env.get_domain("py")
    objtypes = set(domain.objtypes_for_role(node.get("reftype")) or [])
    if target.startswith("kvpress_lab."):
        documented = _documented_path(target)  # e.g. a type hint naming the defining module
        entry = domain.objects.get(documented) if documented else None
        if entry is None or entry.objtype not in objtypes:
            return None
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, documented)
    objtypes &= {"class", "exception", "function"}  # never guess attributes or methods
    suffix = "." + target.lstrip(".~")
    matches = [
        (fullname, entry)
        for fullname, entry in domain.objects.items()
        if fullname.startswith("kvpress_lab.") and fullname.endswith(suffix) and not entry.aliased
        and entry.objtype in objtypes
    ]
    if len(matches) != 1:
        return None
    fullname, entry = matches[0]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, fullname)


def _documented_path(target: str) -> str | None:
    """``kvpress_lab.analysis.report.FunnelReport.to_dict`` -> the path it is documented under.

    Type hints name a class by its defining module; the class is documented at its public path
    (``kvpress_lab.analysis.FunnelReport``), see :func:`_exclusions`.
    """
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:split]))
        except (ImportError, ValueError):
            continue
        name = parts[split]
        obj = getattr(module, name, None)
        if obj is None:
            return None
        home = _public_home(name, obj)
        return ".".join([home, *parts[split:]]) if home else None
    return None


def _forget_data_typehints(app: Any, objtype: str, name: str, obj: Any, *args: Any) -> None:
    """Drop the call signature autodoc records for callable *data* (``hookimpl``, a pluggy marker).

    With ``autodoc_typehints = "description"`` it would show the marker's ``__call__`` return type
    (pluggy's private ``_F`` type variable) as if ``hookimpl`` were a function.
    """
    if objtype in ("data", "attribute"):
        app.env.current_document.autodoc_annotations.pop(name, None)


def _relative_generated_names(app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    """Name a generated page's copied source and search-index entry by its docname, not its absolute path.

    Generated pages live in the build folder, so Sphinx's path of their source is absolute (the
    building machine's folders), and it would land in ``searchindex.js`` and in the name of the
    copied ``_sources`` file. Both become ``reference/_generated/<page>.rst``.
    """
    if not pagename.startswith(GENERATED_DIR.as_posix() + "/"):
        return
    if context.get("sourcename"):
        context["sourcename"] = f"{pagename}.rst{app.config.html_sourcelink_suffix}"
    indexer = getattr(app.builder, "indexer", None)
    filenames = getattr(indexer, "_filenames", None)
    if isinstance(filenames, dict) and pagename in filenames:
        filenames[pagename] = f"{pagename}.rst"


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point."""
    app.connect("autodoc-process-signature", _forget_data_typehints, priority=900)  # after autodoc's
    app.connect("env-get-outdated", _register_generated)
    app.connect("missing-reference", _resolve_short_name, priority=900)  # after intersphinx
    app.connect("html-page-context", _relative_generated_names)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
