"""``kvpress-lab --help`` / ``--version`` start fast: they never import torch or transformers.

Each check runs in a fresh interpreter (this process has long imported torch). No timing is
asserted (too noisy on shared CI machines); what makes start-up slow is importing torch, and that
is what is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from kvpress_lab import cli
try:
    status = cli.main({argv!r})
except SystemExit as exc:
    status = exc.code
heavy = sorted(name for name in ("torch", "transformers", "matplotlib", "numpy") if name in sys.modules)
print("\\n" + json.dumps({{"status": status, "heavy": heavy}}))
"""


def _run(argv: list[str]) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    *output, last = result.stdout.rstrip("\n").split("\n")
    return json.loads(last), "\n".join(output)


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_help_and_version_do_not_import_torch(argv):
    probe, output = _run(argv)
    assert probe == {"status": 0, "heavy": []}
    assert "kvpress-lab" in output


def _commands() -> list[str]:
    from kvpress_lab.cli import COMMANDS

    return list(COMMANDS)


@pytest.mark.parametrize("argv", [[name, "--help"] for name in _commands()] + [["bench", "needle", "--help"]])
def test_every_subcommand_help_imports_nothing_heavy(argv):
    probe, output = _run(argv)
    assert probe == {"status": 0, "heavy": []}, argv
    assert f"kvpress-lab {argv[0]}" in output


def test_building_the_whole_parser_imports_neither_torch_nor_transformers():
    """The full (non-lazy) parser, every subcommand's options included, as the docs build it."""
    code = ("import sys; from kvpress_lab.cli import build_parser; build_parser(); "
            "print(sorted(n for n in ('torch', 'transformers') if n in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_importing_the_package_does_not_import_torch():
    code = "import sys, kvpress_lab; kvpress_lab.cache_report; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


def test_lazy_public_names_still_resolve():
    import kvpress_lab
    from kvpress_lab.recipe import Recipe

    assert kvpress_lab.Recipe is Recipe
    assert set(kvpress_lab.__all__) <= set(dir(kvpress_lab))
    with pytest.raises(AttributeError, match="no attribute 'Recipee'"):
        kvpress_lab.Recipee  # noqa: B018


def test_the_lazy_parser_only_builds_the_command_being_parsed():
    from kvpress_lab.cli import COMMANDS, build_parser

    parser = build_parser(lazy=True)
    args = parser.parse_args(["list", "--role", "scorer"])
    assert args.role == "scorer" and args.handler is COMMANDS["list"].run
    full = build_parser()
    run = full._subparsers._group_actions[0].choices["run"]
    assert any("--json" in action.option_strings for action in run._actions)


def test_every_help_shows_defaults_and_examples(capsys):
    from kvpress_lab.cli import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "examples:\n  kvpress-lab " + name in text, name
        assert name == "bench" or "default" in text, name  # bench's own parser only picks a TASK
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "greedy-decoded tokens at most (default: 64)" in text
    assert "(default: query-aware)" in text



def test_a_new_subcommand_is_one_registration(capsys):
    """A module with a ``Command`` and one ``register_command`` line: the parser, ``--help`` and ``main`` know it."""
    import argparse

    from kvpress_lab.cli import COMMANDS, Command, main, register_command

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--times", type=int, default=1)

    command = Command("say hello", add_arguments, lambda args: print("hello " * args.times) or 0, ("kvpress-lab hello",))
    register_command("hello", command)
    try:
        assert main(["hello", "--times", "2"]) == 0
        assert capsys.readouterr().out.strip() == "hello hello"
        with pytest.raises(ValueError, match="already has a subcommand 'hello'"):
            register_command("hello", command)
    finally:
        del COMMANDS["hello"]
    assert "hello" not in COMMANDS
