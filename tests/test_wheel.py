"""The built wheel ships everything under ``kvpress_lab/`` and works in a fresh virtual environment.

The fresh venv has no pip and no kvpress_lab; the project's *dependencies* (torch, transformers, ...)
are made visible through a ``.pth`` file pointing at a folder of links to this environment's
site-packages entries, *minus* kvpress_lab and its example plugin (their files, dist-info and
editable-install hooks), so that only the wheel can provide ``kvpress_lab`` there. Installing the
real dependencies would take minutes; what this test is about is the wheel's own contents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from kvpress_lab.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
#: Top-level folders of the repository that must only ship inside the kvpress_lab package.
PLUGIN_FOLDERS = ("allocators", "scorers", "strategies", "benchmarks")
#: What the source copy leaves out: the same things .gitignore does, plus what a wheel never needs.
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis",
    "results", "_build", "examples", "tests", "docs",
)
CHECK_SCRIPT = r"""
import importlib.metadata, importlib.util, json, sys, sysconfig
import kvpress_lab
print(json.dumps({
    "file": kvpress_lab.__file__,
    "purelib": sysconfig.get_paths()["purelib"],
    "version": kvpress_lab.__version__,
    "dist_root": str(importlib.metadata.distribution("kvpress-lab").locate_file("")),
    "top_level_plugin_folders": [n for n in ("scorers", "allocators", "strategies", "benchmarks")
                                 if importlib.util.find_spec(n) is not None],
    "entries": sorted([e.role, e.name, e.plugin] for e in kvpress_lab.available()),
}))
"""


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def link_dependencies(target: Path) -> None:
    """Link every entry of this environment's site-packages into ``target``, except kvpress_lab's own."""
    target.mkdir()
    sources = {Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])}
    for site in sources:
        for entry in site.iterdir():
            normalised = entry.name.lower().replace("-", "_")
            own = normalised.startswith(("kvpress_lab", "__editable__"))
            if own or entry.suffix in (".pth", ".egg-link") or (target / entry.name).exists():
                continue
            (target / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a clean copy of the source tree (no stale build/ folder can leak in)."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, work / "src", ignore=IGNORED)
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
         "--outdir", str(work / "dist"), str(work / "src")])
    (built,) = (work / "dist").glob("kvpress_lab-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> dict[str, Path]:
    """A venv without pip or system site-packages, the wheel installed by this environment's pip."""
    work = tmp_path_factory.mktemp("venv")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    link_dependencies(work / "deps")
    (purelib / "_kvpress_lab_test_dependencies.pth").write_text(f"{work / 'deps'}\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)])
    return {"root": venv, "python": python, "purelib": purelib, "cwd": work}


def clean_env() -> dict[str, str]:
    """This process's environment without anything that could point Python at the repository."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def builtin_entries() -> list[list[str]]:
    """Built-in strategies and presets, as the source tree registers them."""
    return sorted([e.role, e.name, e.plugin] for e in Registry(autoload=False) if e.plugin.startswith("kvpress-lab:"))


def test_wheel_ships_plugin_folders_inside_the_package(wheel):
    files = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in files}
    assert top_level == {"kvpress_lab", wheel.name.split("-py3")[0] + ".dist-info"}, top_level
    for folder in PLUGIN_FOLDERS:
        assert f"kvpress_lab/{folder}/__init__.py" in files
        assert not any(name.startswith(f"{folder}/") for name in files)
    for source in (ROOT / "allocators", ROOT / "scorers", ROOT / "strategies"):
        for module in source.glob("*.py"):
            assert f"kvpress_lab/{source.name}/{module.name}" in files
    assert "kvpress_lab/py.typed" in files
    entry_points = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/entry_points.txt").decode()
    assert "kvpress-lab = kvpress_lab.cli:main" in entry_points
    for folder in ("allocators", "scorers", "strategies", "executors"):
        assert f"{folder} = kvpress_lab.{folder}" in entry_points


def source_packages() -> dict[str, str]:
    """Every package of the source tree, by import name, with the wheel path of its ``__init__.py``."""
    roots = {"kvpress_lab": ROOT / "kvpress_lab", **{f"kvpress_lab.{f}": ROOT / f for f in PLUGIN_FOLDERS}}
    found = {}
    for package, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                parts = init.parent.relative_to(folder).parts
                name = ".".join((package, *parts))
                found[name] = name.replace(".", "/") + "/__init__.py"
    return found


def test_wheel_ships_every_source_package(wheel):
    files = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(name for name, init in source_packages().items() if init not in files)
    assert not missing, f"packages missing from the wheel: add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_fresh_venv_imports_the_wheel_and_finds_every_builtin(fresh_venv):
    result = run([str(fresh_venv["python"]), "-I", "-c", CHECK_SCRIPT], cwd=fresh_venv["cwd"], env=clean_env())
    report = json.loads(result.stdout)
    purelib = fresh_venv["purelib"].resolve()
    assert Path(report["file"]).resolve().is_relative_to(purelib), report["file"]
    assert Path(report["dist_root"]).resolve() == purelib
    assert report["version"] != "0.0.0+unknown"
    assert report["top_level_plugin_folders"] == []
    assert report["entries"] == builtin_entries()
    assert all(plugin.startswith("kvpress-lab:") for _, _, plugin in report["entries"])


def test_fresh_venv_has_the_console_script(fresh_venv):
    script = fresh_venv["root"] / "bin" / "kvpress-lab"
    assert script.is_file()
    result = run([str(script), "list", "--json"], cwd=fresh_venv["cwd"], env=clean_env())
    assert sorted([r["role"], r["name"], r["plugin"]] for r in json.loads(result.stdout)) == builtin_entries()
