"""The shape of the code: small functions, small engine classes, a small session.

Read with :mod:`ast` from the package's source folders (``[tool.setuptools] package-dir``):

* no function or method has more than :data:`MAX_BODY` lines of body (its docstring excluded);
* no class in ``kvpress_lab/engine/`` defines more than :data:`MAX_METHODS` methods (properties
  and dunders included);
* ``kvpress_lab/engine/session.py`` is at most :data:`MAX_SESSION_LINES` lines.

Run as a script (``python tests/test_code_shape.py``) it prints the largest of each, the numbers
quoted in the engine's notes.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_import_graph import ROOT, module_files  # noqa: E402

MAX_BODY = 60
MAX_METHODS = 15
MAX_SESSION_LINES = 250


def _docstring_lines(node: ast.AST) -> int:
    body = node.body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def function_bodies() -> list[tuple[int, str]]:
    """``(body lines, "file:line name")`` of every function and method in the package."""
    out = []
    for path in sorted(set(module_files().values())):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.body[0].lineno + 1 - _docstring_lines(node)
                out.append((lines, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def engine_classes() -> list[tuple[int, str]]:
    """``(methods, "file:line name")`` of every class in ``kvpress_lab/engine/``."""
    out = []
    for path in sorted((ROOT / "kvpress_lab" / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                out.append((len(methods), f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def session_lines() -> int:
    return len((ROOT / "kvpress_lab" / "engine" / "session.py").read_text(encoding="utf-8").splitlines())


def test_no_function_is_longer_than_the_limit():
    long = [f"{lines} lines: {where}" for lines, where in function_bodies() if lines > MAX_BODY]
    assert not long, f"functions over {MAX_BODY} lines of body:\n" + "\n".join(long)


def test_no_engine_class_has_more_methods_than_the_limit():
    big = [f"{count} methods: {where}" for count, where in engine_classes() if count > MAX_METHODS]
    assert not big, f"engine classes over {MAX_METHODS} methods:\n" + "\n".join(big)


def test_the_session_module_is_small():
    assert session_lines() <= MAX_SESSION_LINES


def test_the_measures_count_what_they_say(tmp_path):
    source = 'def f():\n    """Doc\n    string."""\n    a = 1\n    return a\n\n\nclass K:\n    def a(self): ...\n    @property\n    def b(self): ...\n'
    tree = ast.parse(source)
    function = tree.body[0]
    assert function.end_lineno - function.body[0].lineno + 1 - _docstring_lines(function) == 2
    assert len([n for n in tree.body[1].body if isinstance(n, ast.FunctionDef)]) == 2


if __name__ == "__main__":
    print(f"engine/session.py: {session_lines()} lines (limit {MAX_SESSION_LINES})")
    print(f"largest function bodies (limit {MAX_BODY}):")
    for lines, where in function_bodies()[:5]:
        print(f"  {lines:4d}  {where}")
    print(f"engine classes with the most methods (limit {MAX_METHODS}):")
    for count, where in engine_classes()[:5]:
        print(f"  {count:4d}  {where}")
