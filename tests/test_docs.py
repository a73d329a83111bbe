"""The documentation: generated reference pages cover the registry, and the Sphinx builds pass -W.

The two build tests run ``sphinx-build -W`` in a subprocess (about 30 s each on a 2-core machine),
exactly as ``.ci/run`` would: the HTML build (nitpicky: every cross-reference must resolve) and
the doctest build (the tutorial, the how-to examples and every docstring example).
"""

from __future__ import annotations

import argparse
import html
import importlib.metadata
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import kvpress_lab
from kvpress_lab import hookimpl
from kvpress_lab.registry import Registry, autoload_enabled

pytest.importorskip("sphinx")

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import kvpress_docs  # noqa: E402


def test_every_registered_name_has_a_section_on_the_strategies_page():
    text = kvpress_docs.strategies_rst()
    entries = kvpress_lab.available()
    assert {e.role for e in entries} == {"allocator", "scorer", "executor", "preset"}
    missing = [f"{e.role} {e.name!r}" for e in entries if f".. _{e.role}-{e.name.replace('_', '-')}:" not in text]
    assert not missing, f"registered but absent from the generated strategies page: {missing}"


def test_installed_third_party_plugins_are_on_the_strategies_page():
    try:
        importlib.metadata.distribution("kvpress-lab-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the example plugin (examples/kvpress_lab_example_plugin) is not installed")
    if not autoload_enabled():
        pytest.skip("third-party plugin autoload is disabled")
    text = kvpress_docs.strategies_rst()
    assert "kvpress-lab-example-plugin:example" in text
    assert ".. _scorer-example-recency:" in text and ".. _preset-example-streaming:" in text


@dataclass(frozen=True)
class _DocsProbeScorer:
    """Probe: a scorer registered only by this test. Based on https://example.org/probe."""

    name: ClassVar[str] = "docs_probe"
    strength: float = 0.5

    def score(self, view):  # pragma: no cover - never run
        raise NotImplementedError


class _ProbePlugin:
    @hookimpl
    def kvpress_lab_register_scorers(self):
        return [_DocsProbeScorer]


def test_a_new_plugin_strategy_appears_with_fields_and_paper():
    registry = Registry(extra_plugins=[("docs-probe", _ProbePlugin())], autoload=False)
    text = kvpress_docs.strategies_rst(list(registry))
    assert ".. _scorer-docs-probe:" in text
    assert "``docs-probe``" in text  # the plugin that registered it
    assert "``strength``" in text and "``0.5``" in text  # its dataclass field and default
    assert "https://example.org/probe" in text  # the "Based on" link
    assert f".. autoclass:: {__name__}._DocsProbeScorer" in text


def test_hooks_page_has_every_hook_spec():
    from kvpress_lab import hookspecs

    text = kvpress_docs.hooks_rst()
    specs = [n for n in dir(hookspecs) if getattr(getattr(hookspecs, n), "kvpress_lab_spec", None) is not None]
    assert specs
    for name in specs:
        assert f".. autofunction:: kvpress_lab.hookspecs.{name}" in text


def test_api_pages_cover_every_public_module():
    pages = kvpress_docs.api_pages()
    for module in kvpress_docs.public_modules():
        if module != "kvpress_lab.hookspecs":  # on the hooks page
            assert f"api/{module}.rst" in pages, module


def test_intersphinx_reads_only_local_inventories():
    """No inventory is fetched: the docs build offline, and -W cannot trip over the network."""
    import runpy

    conf = runpy.run_path(str(DOCS / "conf.py"))
    mapping = conf["intersphinx_mapping"]
    assert {"python", "torch", "transformers", "pluggy"} <= set(mapping)
    for project, (url, inventory) in mapping.items():
        assert url.startswith("https://"), project
        assert isinstance(inventory, str) and "://" not in inventory and Path(inventory).is_file(), project


def _sphinx(builder: str, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, str(DOCS), str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _source_tree() -> dict[str, int]:
    """Every file under docs/ with its modification time (ns)."""
    return {str(p.relative_to(DOCS)): p.stat().st_mtime_ns for p in DOCS.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_html_build_has_no_warnings_and_writes_nothing_into_the_source(tmp_path):
    before = _source_tree()
    result = _sphinx("html", tmp_path / "html")
    assert result.returncode == 0, f"sphinx-build -W -b html failed:\n{result.stderr[-8000:]}"
    assert _source_tree() == before, "the docs build created or modified files in docs/ (it must build from a read-only checkout)"
    assert (tmp_path / "html" / "reference" / "_generated" / "strategies.html").is_file()
    from kvpress_lab.cli import COMMANDS

    cli_page = (tmp_path / "html" / "reference" / "cli.html").read_text(encoding="utf-8")
    for name in COMMANDS:  # sphinx-argparse renders a section per subcommand, from the parser
        assert f'id="kvpress-lab-{name}"' in cli_page, name
    _check_cli_page_can_be_copied(cli_page)
    _check_no_machine_paths(tmp_path / "html")
    index = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    assert "furo" in index and "copybutton" in index  # the responsive theme and the copy button


#: What a path of the machine that built the docs looks like (a user's home, a temporary or work folder, a venv).
MACHINE_PATH = re.compile(r"/tmp/|/root/|/home/|/work/|/Users/|/private/var/|/var/folders/|/site-packages/|\.venv/lib/")


def _check_no_machine_paths(site: Path) -> None:
    """No page, source copy or search index of the built site names a folder of the building machine."""
    found = []
    for path in site.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".txt", ".js", ".json"):
            for match in MACHINE_PATH.finditer(path.read_text(encoding="utf-8", errors="replace")):
                text = match.string
                found.append(f"{path.relative_to(site)}: ...{text[max(match.start() - 60, 0):match.end() + 40]}...")
    assert not found, "machine paths in the built site:\n" + "\n".join(found[:10])


def _check_cli_page_can_be_copied(page: str) -> None:
    """Every flag is typed as ``--flag`` (no smart-quote dash), and each example is a code block of its own."""
    from kvpress_lab.cli import COMMANDS, build_parser

    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert "\u2013" not in text and "\u2014" not in text, "a dash where the page should show --"
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {flag for sub in commands.choices.values() for action in sub._actions for flag in action.option_strings
             if flag.startswith("--")}
    assert flags and not [flag for flag in flags if flag not in text]
    blocks = re.findall(r'<div class="highlight-console notranslate"><div class="highlight"><pre>(.*?)</pre>', page,
                        flags=re.DOTALL)
    examples = [html.unescape(re.sub(r"<[^>]+>", "", block)).strip() for block in blocks]
    expected = [f"$ {line}" for command in COMMANDS.values() for line in command.examples]
    assert all(example.count("\n") == 0 for example in examples), "an example block holds more than one command"
    assert set(expected) <= set(examples), sorted(set(expected) - set(examples))[:3]


def test_doctest_build_passes(tmp_path):
    result = _sphinx("doctest", tmp_path / "doctest")
    report = tmp_path / "doctest" / "output.txt"  # the doctest builder's failure report
    failures = [c for c in (report.read_text() if report.is_file() else "").split("\nDocument: ") if "Failed" in c]
    output = result.stderr + "\nDocument: ".join(["", *failures])
    assert result.returncode == 0, f"sphinx-build -W -b doctest failed:\n{output[-8000:]}"
