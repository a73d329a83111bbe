"""``kvpress-lab list``: every registered strategy and preset, with its plugin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import kvpress_lab
from kvpress_lab.cli import COMMANDS, main
from kvpress_lab.registry import ROLES, Registry


def run_list(capsys, *args: str) -> str:
    assert main(["list", *args]) == 0
    return capsys.readouterr().out


def test_table_lists_every_entry_with_its_plugin(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # wide: the summaries beside their rows
    lines = run_list(capsys).splitlines()
    assert lines[0].split() == ["ROLE", "NAME", "PLUGIN", "SUMMARY"]
    rows = {tuple(line.split()[:3]) for line in lines[1:] if line.strip()}
    entries = kvpress_lab.available()
    for entry in entries:
        assert (entry.role, entry.name, entry.plugin) in rows
    closing = " ".join(lines[lines.index("") + 1:]) if "" in lines else lines[-1]
    assert f"{len(entries)} entries from plugins: " in closing
    assert "kvpress-lab-example-plugin:example" in closing


def test_table_summaries_drop_rest_markup(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # wide: every summary on its row's line
    text = run_list(capsys)
    line = next(row for row in text.splitlines() if row.split()[1:2] == ["snapkv_window"])
    assert "last W prompt queries" in line
    for markup in ("``", ":func:", ":class:", ":mod:", ":meth:", "`_"):
        assert markup not in text, markup
    merge = next(row for row in text.splitlines() if row.split()[1:2] == ["merge_ragged"])
    assert "with merge_evicted_values." in merge


@pytest.mark.parametrize("columns", [80, 100, 120, 200])
def test_table_fits_the_terminal(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    lines = run_list(capsys).splitlines()
    assert max(len(line) for line in lines) <= columns
    summaries = " ".join(lines)
    assert "last W prompt queries" in " ".join(summaries.split())  # wrapped, not cut


def test_json_output_parses_and_matches_the_registry(capsys):
    rows = json.loads(run_list(capsys, "--json"))
    assert [(r["role"], r["name"], r["plugin"]) for r in rows] == [(e.role, e.name, e.plugin) for e in kvpress_lab.available()]
    by_key = {(r["role"], r["name"]): r for r in rows}
    assert by_key["scorer", "snapkv_window"]["parameters"] == {"kernel_size": 7, "pooling": "max", "reduction": "sum",
                                                                "pad_window": False}
    assert by_key["allocator", "uniform"]["scope"] == "static"
    assert by_key["preset", "snapkv"]["recipe"]["scorer"] == "snapkv_window"
    assert by_key["scorer", "example_recency"]["plugin"] == "kvpress-lab-example-plugin:example"


@pytest.mark.parametrize("role", ROLES)
def test_role_filter(capsys, role):
    rows = json.loads(run_list(capsys, "--json", "--role", role))
    assert rows and {r["role"] for r in rows} == {role}
    assert [r["name"] for r in rows] == [e.name for e in kvpress_lab.available(role)]


def test_usage_errors_exit_with_status_2(capsys):
    for argv in ([], ["list", "--role", "scorers"], ["frobnicate"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "invalid choice: 'scorers'" in capsys.readouterr().err


def test_subcommands_come_from_the_command_table(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for name, command in COMMANDS.items():
        assert f"{name} {command.help}" in help_text


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("kvpress-lab")
    result = subprocess.run([str(script), "list", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    names = {(r["role"], r["name"]) for r in json.loads(result.stdout)}
    assert ("allocator", "uniform") in names and ("scorer", "example_recency") in names


def test_plugin_errors_are_one_line_on_stderr_with_status_1(capsys, monkeypatch):
    def broken_registry():
        raise kvpress_lab.PluginError("Plugin 'x' registered something odd.")

    monkeypatch.setattr("kvpress_lab.cli.listing.get_registry", broken_registry)
    monkeypatch.setattr("kvpress_lab.cli.listing.fast_listing", lambda: None)  # the live registry path, whatever ran before
    assert main(["list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "kvpress-lab list: error: Plugin 'x' registered something odd.\n"


def test_autoload_switch_is_reported_and_hides_third_party_entries(capsys, monkeypatch):
    monkeypatch.setenv("KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setattr("kvpress_lab.cli.listing.get_registry", Registry)
    output = run_list(capsys)
    assert "example_recency" not in output and "snapkv_window" in output
    assert output.rstrip().endswith("third-party autoload off (KVPRESS_LAB_DISABLE_PLUGIN_AUTOLOAD).")
