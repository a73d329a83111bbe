"""The built wheel ships everything under ``kvpress_lab/`` and works in a fresh virtual environment.

The fresh venv lives outside the repository and has no pip and no kvpress_lab. What a bare
``pip install kvpress-lab`` would bring, the project's *core* dependencies (torch, transformers,
pluggy, ... and what they require, no extra), is made visible through a ``.pth`` file pointing at
a folder of links to those distributions' files in this environment's site-packages; nothing of
an extra (matplotlib, gguf, psutil, submitit, lm-eval) and not kvpress_lab itself, so that only
the wheel can provide ``kvpress_lab`` there and a command that needs an extra must say which.
Installing the real dependencies would take minutes; what this test is about is the wheel.
"""

from __future__ import annotations

import importlib.metadata
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


def core_distributions(name: str = "kvpress-lab") -> set[str]:
    """``name``'s requirements without extras, and theirs, recursively: what ``pip install name`` installs."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    pending = [name]
    while pending:
        current = canonicalize_name(pending.pop())
        if current in found:
            continue
        try:
            requires = importlib.metadata.distribution(current).requires or []
        except importlib.metadata.PackageNotFoundError:  # a requirement whose marker excludes this machine
            continue
        found.add(current)
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found - {"kvpress-lab"}


def link_dependencies(target: Path) -> set[str]:
    """Link the files of kvpress_lab's core dependencies (:func:`core_distributions`) into ``target``.

    Returns the top-level names linked (packages, modules, dist-info folders).
    """
    target.mkdir()
    linked: set[str] = set()
    for name in core_distributions():
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or []:
            top = file.parts[0]
            if top == ".." or top in linked or top.endswith((".pth", ".egg-link")) or top == "__pycache__":
                continue  # scripts outside site-packages, path hooks
            source = Path(distribution.locate_file(top))
            if source.exists():
                (target / top).symlink_to(source)
                linked.add(top)
    return linked


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


#: A recipe on a tiny random Llama, in the fresh venv: compress a 48-token prompt to 16 entries per layer.
TINY_RECIPE_SCRIPT = r"""
import json, torch
from transformers import LlamaConfig, LlamaForCausalLM
from kvpress_lab import Recipe, cache_report

torch.manual_seed(0)
config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                     num_hidden_layers=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(config).eval()
input_ids = torch.randint(3, 97, (1, 48))
with Recipe.preset("snapkv", budget=16).apply(model):
    output = model.generate(input_ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
report = cache_report(output.cache).to_dict()
print(json.dumps({"new_tokens": output.sequences.shape[1] - 48,
                  "kept_max": max(layer["kept_max"] for layer in report["layers"])}))
"""


def test_fresh_venv_is_a_bare_install(fresh_venv):
    """The simulation holds: the core dependencies are there, no extra's."""
    code = "import importlib.util as u; print([n for n in ('torch', 'transformers', 'matplotlib', 'gguf', 'psutil', 'submitit') if u.find_spec(n)])"
    result = run([str(fresh_venv["python"]), "-I", "-c", code], cwd=fresh_venv["cwd"], env=clean_env())
    assert result.stdout.strip() == "['torch', 'transformers']"


def test_fresh_venv_lists_strategies_as_plain_text(fresh_venv):
    script = fresh_venv["root"] / "bin" / "kvpress-lab"
    result = run([str(script), "list"], cwd=fresh_venv["cwd"], env={**clean_env(), "COLUMNS": "100"})
    names = {line.split()[1] for line in result.stdout.splitlines()[1:] if line.strip() and not line.startswith(" ")
             and len(line.split()) > 1}
    assert {"pyramid", "snapkv_window", "gather", "pyramidkv", "kvzip"} <= names
    assert "``" not in result.stdout and ":class:" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


def test_fresh_venv_runs_a_recipe_on_a_tiny_model(fresh_venv):
    result = run([str(fresh_venv["python"]), "-I", "-c", TINY_RECIPE_SCRIPT], cwd=fresh_venv["cwd"], env=clean_env())
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["new_tokens"] == 4
    assert 0 < report["kept_max"] < 48  # compressed: fewer entries than the 48 + 4 tokens seen


def test_fresh_venv_demo_help_works_and_demo_names_its_extra(fresh_venv):
    script = str(fresh_venv["root"] / "bin" / "kvpress-lab")
    help_text = run([script, "demo", "--help"], cwd=fresh_venv["cwd"], env=clean_env()).stdout
    assert "examples:\n  kvpress-lab demo" in help_text
    for argv in (["demo"], ["plot", "needle.json"]):
        result = subprocess.run([script, *argv], capture_output=True, text=True, timeout=300, cwd=fresh_venv["cwd"],
                                env=clean_env(), check=False)
        assert result.returncode == 1, (argv, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
        assert "needs matplotlib" in result.stderr and "pip install 'kvpress-lab[bench]'" in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------
# The source distribution
# ---------------------------------------------------------------------------------------------

#: Files the sdist must hold besides the packages: the test suite collects and passes from the unpacked sdist.
SDIST_FOLDERS = ("tests", "docs", "examples", "scripts", "results/docs")
SDIST_FILES = ("LICENSE", "CITATION.cff", "README.md", "pyproject.toml", ".ci/run")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tuple[Path, Path]:
    """``(sdist, source)``: the sdist built from a clean copy of the source tree, and that copy."""
    work = tmp_path_factory.mktemp("sdist")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "_build"))
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check",
         "--outdir", str(work / "dist"), str(source)])
    (built,) = (work / "dist").glob("kvpress_lab-*.tar.gz")
    return built, source


def test_sdist_holds_the_tests_docs_and_license(sdist):
    import tarfile

    built, source = sdist
    with tarfile.open(built) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        pkg_info = archive.extractfile(f"{built.name.removesuffix('.tar.gz')}/PKG-INFO").read().decode()
    expected = {str(path.relative_to(source)) for folder in SDIST_FOLDERS for path in (source / folder).rglob("*")
                if path.is_file()}
    missing = sorted(expected - names) + [name for name in SDIST_FILES if name not in names]
    assert not missing, f"files missing from the sdist (MANIFEST.in): {missing[:20]}"
    assert "License-File: LICENSE" in pkg_info and "License-Expression: Apache-2.0" in pkg_info


def test_twine_check_passes_on_wheel_and_sdist(wheel, sdist):
    pytest.importorskip("twine")
    result = run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist[0])])
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_ships_the_license(wheel):
    files = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in files), files[-10:]


def test_citation_file_matches_the_package():
    import tomllib

    import yaml

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["version"] == project["version"]  # the release checklist bumps both
    assert citation["license"] == project["license"]
    assert citation["title"] and citation["authors"] and citation["message"]
