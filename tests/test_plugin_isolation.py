"""Built-in plugin packages stand on the ground floor only.

The rule: a plugin (``kvpress_lab.executors``, ``kvpress_lab.allocators``,
``kvpress_lab.scorers``, ``kvpress_lab.strategies``) may build on the ground floor of the
package -- the protocols, ``layer_view``, the attention helpers, budgets, the profile
format, the cache layers -- and never on the floors above it: the engine
(``kvpress_lab.engine``, which drives plugins), the analysis tools (``kvpress_lab.analysis``),
the command line (``kvpress_lab.cli``), the benchmarks (``kvpress_lab.benchmarks``) or the
calibration driver (``kvpress_lab.calibration``). Otherwise loading the registry drags the
whole stack (and its heavy optional dependencies) in, third-party plugins copy the bad
example, and the engine <-> plugin imports turn into cycles.

Each package is imported in a fresh interpreter (``KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD=1``,
so no third-party plugin muddies the picture) that prints the ``kvpress_lab`` modules in
``sys.modules``; a package that fails to import is reported with the forbidden modules it
tried to import on the way. The interpreters are started together, once per test module, so
the whole file costs about one import of the slowest package. A control case imports
``kvpress_lab.engine.session`` and checks that the same detector flags it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import pytest

PLUGIN_PACKAGES = (
    "kvpress_lab.executors",
    "kvpress_lab.allocators",
    "kvpress_lab.scorers",
    "kvpress_lab.strategies",
)

#: A module is forbidden when it is one of these or lies under one of them.
FORBIDDEN_PREFIXES = (
    "kvpress_lab.engine",
    "kvpress_lab.analysis",
    "kvpress_lab.cli",
    "kvpress_lab.benchmarks",
    "kvpress_lab.calibration",
)

#: The control case: a module that certainly lies above the ground floor.
CONTROL_MODULE = "kvpress_lab.engine.session"

# Runs in the fresh interpreter, with the target module as argv[1]. It imports the root
# package first, then the target, and prints one JSON line: the ``kvpress_lab`` modules in
# ``sys.modules`` after each step (so a failure says whether a forbidden module came in
# through ``kvpress_lab/__init__.py``), every ``kvpress_lab`` module whose import was
# attempted with the package module whose code asked for it first (modules of a failed
# import are dropped from ``sys.modules``, so this is what a failure is judged on), and the error.
_PROBE = """
import importlib, json, sys, traceback

class Attempts:
    importers = {}  # module -> the kvpress_lab module whose code first asked for it

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "kvpress_lab" or name.startswith("kvpress_lab."):
            frame = sys._getframe(1)
            while frame is not None and not str(frame.f_globals.get("__name__", "")).startswith("kvpress_lab"):
                frame = frame.f_back
            cls.importers.setdefault(name, frame.f_globals["__name__"] if frame else None)
        return None  # only watching: the real finders do the work

def loaded():
    return sorted(m for m in sys.modules if m == "kvpress_lab" or m.startswith("kvpress_lab."))

sys.meta_path.insert(0, Attempts)
report = {"root": [], "all": [], "importers": {}, "error": None}
try:
    importlib.import_module("kvpress_lab")
    report["root"] = loaded()
    importlib.import_module(sys.argv[1])
except BaseException as exc:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    where = [f"  {f.filename}:{f.lineno}: {f.line}" for f in frames[-6:]]
    report["error"] = "\\n".join([*where, f"{type(exc).__name__}: {exc}"])
report["all"] = loaded()
report["importers"] = Attempts.importers
print(json.dumps(report))
"""

Report = dict[str, Any]


def forbidden_modules(names: Iterable[str]) -> list[str]:
    """The names in ``names`` that a plugin must not pull in, sorted."""
    return sorted(
        name
        for name in set(names)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN_PREFIXES)
    )


@pytest.fixture(scope="module")
def probes() -> dict[str, Report]:
    """``{target: report}`` from one fresh interpreter per target, all started at once."""
    env = dict(os.environ, KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD="1")
    procs = {
        target: subprocess.Popen(
            [sys.executable, "-c", _PROBE, target],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for target in (*PLUGIN_PACKAGES, CONTROL_MODULE)
    }
    reports: dict[str, Report] = {}
    for target, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = out.strip().splitlines()
        try:
            reports[target] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            reports[target] = {"root": [], "all": [], "importers": {},
                               "error": f"probe crashed (exit {proc.returncode}):\n{err[-2000:]}"}
    return reports


@pytest.mark.parametrize("package", PLUGIN_PACKAGES)
def test_plugin_package_imports_only_the_ground_floor(package: str, probes: dict[str, Report]) -> None:
    """Importing a built-in plugin package loads no engine, analysis, CLI, benchmarks or
    calibration module."""
    report = probes[package]
    via_root = set(forbidden_modules(report["root"]))

    def describe(name: str) -> str:
        importer = report["importers"].get(name)
        note = f"  (imported by {importer})" if importer and importer != name else ""
        return f"  {name}{note}" + ("  [already loaded by `import kvpress_lab`]" if name in via_root else "")

    if report["error"]:
        tried = forbidden_modules(report["importers"])
        pytest.fail(
            f"importing {package} failed; forbidden modules it tried to import on the way ({len(tried)}):\n"
            + "\n".join(map(describe, tried))
            + f"\nerror:\n{report['error']}"
        )
    bad = forbidden_modules(report["all"])
    lines = [describe(name) for name in bad]
    assert not bad, (
        f"importing {package} pulled in {len(bad)} forbidden module(s) "
        f"(plugins must not depend on {', '.join(FORBIDDEN_PREFIXES)}):\n" + "\n".join(lines)
    )


def test_detector_flags_an_engine_import(probes: dict[str, Report]) -> None:
    """Control: the detector does report a forbidden module when one is really imported."""
    report = probes[CONTROL_MODULE]
    assert report["error"] is None, f"the control import {CONTROL_MODULE} failed:\n{report['error']}"
    bad = forbidden_modules(report["all"])
    assert CONTROL_MODULE in bad, f"detector missed {CONTROL_MODULE}; it saw {report['all']}"
    assert "kvpress_lab.engine" in bad  # its parent package came along too
    # Prefix matching is by dotted component, not by string prefix.
    assert forbidden_modules(["kvpress_lab.engineering", "kvpress_lab.cli_helpers", "kvpress_lab.layer_view"]) == []
    assert forbidden_modules(["kvpress_lab.cli", "kvpress_lab.analysis", "kvpress_lab.benchmarks.demo"]) == [
        "kvpress_lab.analysis",
        "kvpress_lab.benchmarks.demo",
        "kvpress_lab.cli",
    ]
