"""``kvpress-lab list``: every registered strategy and preset, with the plugin that provided it."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from typing import Any

from kvpress_lab.cli.command import Command
from kvpress_lab.registry import AUTOLOAD_ENV, ROLES, get_registry

__all__ = ["COMMAND", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=ROLES, help="show only this role (default: every role)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def fast_listing() -> Any:
    """Built-ins from :mod:`kvpress_lab.builtin_manifest` (no torch), or ``None`` to list the live registry.

    ``None`` also when this process already built its registry or registered strategies in-process
    (:func:`kvpress_lab.register`): listing it then costs nothing and shows those too.
    """
    from kvpress_lab.builtin_manifest import fast_listing as manifest_listing
    from kvpress_lab.registry import process_registry_in_use

    return None if process_registry_in_use() else manifest_listing()


def run(args: argparse.Namespace) -> int:
    """Print every registered strategy and preset with the plugin that provided it.

    The built-ins come from the manifest while it matches their sources (``kvpress-lab list``
    then imports no torch); otherwise, and when this process already built its registry, from
    the live registry. Third-party plugins are always loaded live.
    """
    from kvpress_lab.builtin_manifest import live_listing

    listing = fast_listing() or live_listing(get_registry())
    rows = [row for row in listing.rows if args.role is None or row["role"] == args.role]
    if args.json:
        print(json.dumps(rows, indent=2, default=repr))
        return 0
    from kvpress_lab.cli.table import plain_text, wrapped_table

    # Summaries are docstring first lines: reST markup dropped, wrapped to the terminal's width.
    table = [("ROLE", "NAME", "PLUGIN", "SUMMARY")] + [
        (row["role"], row["name"], row["plugin"], plain_text(row["summary"])) for row in rows
    ]
    print(wrapped_table(table))
    autoload = "on" if listing.autoload else f"off ({AUTOLOAD_ENV})"
    closing = f"{len(rows)} entries from plugins: {', '.join(listing.plugins)}; third-party autoload {autoload}."
    print("\n" + textwrap.fill(closing, shutil.get_terminal_size((100, 24)).columns, break_on_hyphens=False))
    return 0


COMMAND = Command("list registered allocators, scorers, executors and presets", add_arguments, run,
                  ("kvpress-lab list", "kvpress-lab list --role scorer", "kvpress-lab list --role preset --json"))
