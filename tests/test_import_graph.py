"""The package's import graph has no cycles.

Every ``.py`` file of the installed package's source is parsed with :mod:`ast` (nothing is
imported). The folders come from ``[tool.setuptools] package-dir`` in ``pyproject.toml``,
so a newly mapped folder (``benchmarks/`` -> ``kvpress_lab.benchmarks``, ...) is walked
without touching this file. An edge ``a -> b`` means module ``a`` imports module ``b``:

* ``import x.y`` -> ``x.y``; ``from x.y import z`` -> ``x.y.z`` when that is a module of the
  package, else ``x.y``; relative imports are resolved against the importing module;
* imports at module level **and** inside functions, methods and classes count: a lazy
  import back into a module still closes a circle (it only moves the failure from import
  time to call time, and it hides the layering problem);
* imports under ``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` never run, but they say
  which concept stands on which as much as any other import: they are edges too, marked
  ``annotation`` (:func:`import_graph` leaves them out on request, for the run-time picture);
  their ``else:`` branch is walked as usual;
* imports under ``if __name__ == "__main__":`` are parsed but not edges: that block runs only
  when the file is executed as the script ``__main__``, a different module object than the
  importable one (``python -m kvpress_lab.benchmarks.demo`` delegating to the CLI is no circle);
* only edges between modules of the package count, and no implicit edge is added from a
  module to its parent packages (``import kvpress_lab.engine.session`` runs
  ``kvpress_lab/engine/__init__.py`` too, but that is the package's own business).

Cycles are the strongly connected components of size > 1 (iterative Tarjan, below) plus
any module that imports itself. :func:`import_graph` and :func:`cycles` are plain
functions so the finder itself is tested on a hand-made graph.
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


# ---------------------------------------------------------------------------------------------
# Walking the source tree
# ---------------------------------------------------------------------------------------------


def package_dirs(pyproject: Path = PYPROJECT) -> dict[str, Path]:
    """``{dotted package: folder}`` from ``[tool.setuptools] package-dir``."""
    with pyproject.open("rb") as fh:
        config = tomllib.load(fh)
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {package: (pyproject.parent / folder).resolve() for package, folder in mapping.items()}


def module_files(dirs: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under each mapped folder.

    A folder mapped explicitly wins over the same files reached through a parent mapping
    (``allocators/`` is ``kvpress_lab.allocators`` whatever lies under ``kvpress_lab/``).
    """
    dirs = package_dirs() if dirs is None else dirs
    modules: dict[str, Path] = {}
    # Longest package name last, so an explicit (nested) mapping overrides a parent's walk.
    for package, folder in sorted(dirs.items(), key=lambda item: item[0].count(".")):
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if "__pycache__" in rel.parts:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


# ---------------------------------------------------------------------------------------------
# Parsing imports
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSite:
    """One import statement that yields an edge: where it is and whether it is lazy."""

    target: str
    lineno: int
    lazy: bool  # inside a function or method (runs at call time, not at import time)
    main_guard: bool = False  # under ``if __name__ == "__main__":`` (not an edge: see the module docstring)
    annotation: bool = False  # under ``if TYPE_CHECKING:`` (never runs; an edge of the drawing all the same)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute)
        and test.attr == "TYPE_CHECKING"
        and isinstance(test.value, ast.Name)
        and test.value.id == "typing"
    )


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(base):
        raise ImportError(f"relative import beyond the top-level package in {module}")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _owning_module(name: str, known: set[str]) -> str | None:
    """``name`` itself when it is a module of the package, else its longest known prefix."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _walk_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool, bool]]:
    """Every import node, with (lazy, main-guarded, annotation-only: under ``if TYPE_CHECKING:``)."""
    stack: list[tuple[ast.AST, bool, bool, bool]] = [(tree, False, False, False)]
    while stack:
        node, lazy, guarded, annotation = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy, guarded, annotation
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, lazy, guarded, True) for child in node.body)  # never runs: annotation-only
            stack.extend((child, lazy, guarded, annotation) for child in node.orelse)
            continue
        if isinstance(node, ast.If) and _is_main_guard(node.test):
            stack.extend((child, lazy, True, annotation) for child in node.body)
            stack.extend((child, lazy, guarded, annotation) for child in node.orelse)
            continue
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner, guarded, annotation) for child in ast.iter_child_nodes(node))


def import_sites(source: str, module: str, is_package: bool, known: set[str]) -> list[ImportSite]:
    """The imports of ``module`` (given as source text) that land on a module in ``known``."""
    sites: set[ImportSite] = set()
    for node, lazy, guarded, annotation in _walk_imports(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if alias.name != "*" and submodule in known else base)
        for target in targets:
            owner = _owning_module(target, known)
            if owner is not None:
                sites.add(ImportSite(owner, node.lineno, lazy, guarded, annotation))
    return sorted(sites, key=lambda site: (site.lineno, site.target))


@cache
def _package_sites() -> dict[str, tuple[ImportSite, ...]]:
    files = module_files()
    known = set(files)
    return {
        module: tuple(import_sites(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", known))
        for module, path in files.items()
    }


def import_graph(*, annotations: bool = True) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every module of the package.

    ``annotations=False`` leaves out the imports made under ``if TYPE_CHECKING:`` (what runs).
    """
    return {
        module: {site.target for site in sites if not site.main_guard and (annotations or not site.annotation)}
        for module, sites in _package_sites().items()
    }


# ---------------------------------------------------------------------------------------------
# Cycle finding
# ---------------------------------------------------------------------------------------------


def strongly_connected_components(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep graphs)."""
    nodes = set(graph) | {target for targets in graph.values() for target in targets}
    successors = {node: sorted(graph.get(node, ())) for node in nodes}
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        index[root] = lowlink[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterator[str]]] = [(root, iter(successors[root]))]
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = lowlink[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                    break
                if child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component: set[str] = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def cycles(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """The import cycles of ``graph``: SCCs of size > 1 and self-importing modules, sorted."""
    found = [
        component
        for component in strongly_connected_components(graph)
        if len(component) > 1 or next(iter(component)) in graph.get(next(iter(component)), ())
    ]
    return sorted(found, key=lambda component: (-len(component), sorted(component)))


def _shortest_circle(graph: Mapping[str, Iterable[str]], component: set[str], start: str) -> list[str] | None:
    """The shortest ``[start, ..., start]`` circle staying inside ``component`` (BFS)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child in component and child not in parent:
                parent[child] = node
                queue.append(child)
    return None


def cycle_path(graph: Mapping[str, Iterable[str]], component: set[str]) -> list[str]:
    """One shortest concrete circle inside ``component``, as ``[a, b, ..., a]``.

    Of all shortest circles, the one starting at the alphabetically first module is shown.
    """
    circles = [c for c in (_shortest_circle(graph, component, start) for start in sorted(component)) if c]
    if not circles:
        raise ValueError(f"{sorted(component)} is not a cycle of the graph")
    return min(circles, key=len)


def _edge_note(source: str, target: str) -> str:
    """``file:line (lazy)`` for each statement making ``source -> target``."""
    files = module_files()
    where = [
        f"{files[source].relative_to(ROOT)}:{site.lineno}"
        + (" lazy" if site.lazy else "")
        + (" under __main__ guard" if site.main_guard else "")
        + (" under TYPE_CHECKING" if site.annotation else "")
        for site in _package_sites()[source]
        if site.target == target
    ]
    return ", ".join(where)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def describe_cycles(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One paragraph per cycle of ``graph``: its modules, a shortest circle and every edge inside it."""
    lines = []
    for number, component in enumerate(cycles(graph), 1):
        path = cycle_path(graph, component)
        lines.append(f"cycle {number} ({len(component)} modules): {', '.join(sorted(component))}")
        lines.append(f"  path: {' -> '.join(path)}")
        for source, target in zip(path, path[1:]):
            lines.append(f"    {source} -> {target}  [{_edge_note(source, target)}]")
        inside = sorted((a, b) for a in component for b in graph.get(a, ()) if b in component)
        lines.append(f"  all {len(inside)} edges inside it:")
        lines.extend(f"    {a} -> {b}  [{_edge_note(a, b)}]" for a, b in inside)
    return lines


def test_no_import_cycles() -> None:
    """No module of the package can reach itself through imports: lazy ones and those made for
    annotations only (under ``if TYPE_CHECKING:``) included, so the drawing of who stands on whom has
    no circle either."""
    graph = import_graph()
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s) in the package:\n" + "\n".join(describe_cycles(graph))


def test_no_run_time_import_cycles() -> None:
    """The run-time graph (annotation-only imports left out) has no cycle: the narrower, older rule."""
    graph = import_graph(annotations=False)
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s) in the package:\n" + "\n".join(describe_cycles(graph))


def test_cycle_finder_detects_a_planted_cycle() -> None:
    """The finder reports a planted circle (and only it), and nothing on an acyclic graph."""
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [{"a", "b", "c"}]
    assert cycle_path(planted, {"a", "b", "c"}) == ["a", "b", "c", "a"]

    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []
    assert cycles({"a": {"a"}, "b": set()}) == [{"a"}]  # a self-import is a cycle too
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [{"a", "b"}, {"c", "d"}]

    # A long chain closing on itself: the iterative walk has no recursion limit.
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)} | {"m5000": {"m0"}}
    assert cycles(chain) == [set(chain)]


def test_import_parser_rules() -> None:
    """Lazy imports count, TYPE_CHECKING imports count as annotation-only edges, relative imports
    resolve, and ``from pkg import name`` lands on ``pkg.name`` only when that is a module."""
    known = {"p", "p.a", "p.b", "p.sub", "p.sub.c", "p.sub.d"}
    source = (
        "import typing\n"
        "from typing import TYPE_CHECKING\n"
        "import os, p.a\n"
        "from . import d, helper\n"  # p.sub.d is a module; helper is a name in p.sub
        "from .d import thing\n"
        "from ..a import x\n"
        "if TYPE_CHECKING:\n"
        "    from p.sub import d\n"
        "else:\n"
        "    import p.sub\n"
        "if typing.TYPE_CHECKING:\n"
        "    import p.b\n"
        "def f():\n"
        "    from p.sub.c import y\n"
        "if __name__ == '__main__':\n"
        "    import p.a\n"
        "class K:\n"
        "    import p.b as b_at_import_time\n"  # a class body runs at import time: not lazy
        "    def m(self):\n"
        "        import p\n"
    )
    sites = import_sites(source, "p.sub.c", is_package=False, known=known)
    assert [(s.target, s.lineno, s.lazy) for s in sites if not s.main_guard and not s.annotation] == [
        ("p.a", 3, False),
        ("p.sub", 4, False),
        ("p.sub.d", 4, False),
        ("p.sub.d", 5, False),
        ("p.a", 6, False),
        ("p.sub", 10, False),
        ("p.sub.c", 14, True),
        ("p.b", 18, False),
        ("p", 20, True),
    ]
    assert [(s.target, s.lineno) for s in sites if s.annotation] == [("p.sub.d", 8), ("p.b", 12)]
    assert [(s.target, s.lineno) for s in sites if s.main_guard] == [("p.a", 16)]
    # In an __init__.py the package itself is the anchor of a relative import.
    init_sites = import_sites("from . import c\nfrom .d import z\n", "p.sub", is_package=True, known=known)
    assert [s.target for s in init_sites] == ["p.sub.c", "p.sub.d"]


def test_walker_sees_the_whole_package_and_lazy_edges() -> None:
    """The walker finds every mapped folder's modules and a known function-level edge.

    The lazy edge checked is ``kvpress_lab.cli.bench -> kvpress_lab.benchmarks.bench``: the
    ``bench`` subcommand's handler ``run`` in ``kvpress_lab/cli/bench.py`` imports ``cmd_bench``
    from ``kvpress_lab.benchmarks.bench`` inside the function. That import is lazy by design: the
    command line is the top floor, ``benchmarks`` is an optional, heavy layer (matplotlib,
    datasets) that ``kvpress-lab list`` / ``--help`` must not load, and ``benchmarks/bench.py`` is
    the home of the ``bench`` command's work.
    """
    files = module_files()
    graph = import_graph()
    assert len(graph) > 40, f"only {len(graph)} modules found: {sorted(graph)}"
    for package in package_dirs():
        assert package in graph, f"mapped package {package} was not walked"
    assert "kvpress_lab.allocators.uniform" in graph  # a remapped folder lands in the namespace
    assert not any("__pycache__" in str(path) for path in files.values())

    assert "kvpress_lab.benchmarks.bench" in graph["kvpress_lab.cli.bench"]
    cli_sites = [s for s in _package_sites()["kvpress_lab.cli.bench"] if s.target == "kvpress_lab.benchmarks.bench"]
    assert cli_sites and all(site.lazy for site in cli_sites), "cli.bench -> benchmarks.bench should be lazy only"


#: Built-in plugin packages: the engine drives plugins through their protocols and never imports them.
PLUGIN_PACKAGES = ("kvpress_lab.executors", "kvpress_lab.allocators", "kvpress_lab.scorers", "kvpress_lab.strategies")


def _under(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_engine_imports_no_plugin_package() -> None:
    """No module of ``kvpress_lab.engine`` imports a built-in plugin package, not even for annotations."""
    graph = import_graph()
    found = sorted(f"{a} -> {b}  [{_edge_note(a, b)}]" for a, targets in graph.items() if _under(a, ["kvpress_lab.engine"])
                   for b in targets if _under(b, PLUGIN_PACKAGES))
    assert not found, "the engine imports plugin packages:\n" + "\n".join(found)


def test_nothing_below_the_command_line_imports_it() -> None:
    """The command line (``kvpress_lab.cli``) stands on the benchmarks and the core; nothing imports it back."""
    graph = import_graph()
    found = sorted(f"{a} -> {b}  [{_edge_note(a, b)}]" for a, targets in graph.items() if not _under(a, ["kvpress_lab.cli"])
                   for b in targets if _under(b, ["kvpress_lab.cli"]))
    assert not found, "modules below the command line import it:\n" + "\n".join(found)
