"""``kvpress-lab summarize RESULTS...``: merge a sweep's shard files into one table (and plot).

Exit status: 0 when every cell of the recorded grid is present; :data:`MISSING_STATUS` (3) when
some are missing, unless ``--allow-missing``; 2 for files that cannot be read or do not form one
sweep. Duplicated cells never change the status: identical copies are a note, conflicting ones a
warning (both on stderr, with the file names).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from kvpress_lab.cli.command import Command
from kvpress_lab.cli.values import int_at_least

__all__ = ["MISSING_STATUS", "COMMAND", "add_summarize_arguments", "run_summarize"]

#: Exit status of ``summarize`` when cells of the grid are in no file (and ``--allow-missing`` is not given).
MISSING_STATUS = 3


def add_summarize_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kvpress-lab summarize``."""
    parser.add_argument("files", nargs="+", metavar="RESULTS",
                        help="sweep files (.jsonl) of one sweep, e.g. the shard files results/needle.shard<i>-of-<n>.jsonl")
    parser.add_argument("--allow-missing", action="store_true",
                        help=f"exit 0 even when cells of the grid are missing (default: exit status {MISSING_STATUS})")
    parser.add_argument("--plot", metavar="PNG", help="also draw the merged rows (needle heatmap or budget curves)")
    parser.add_argument("--out", metavar="JSONL", help="also write the merged sweep file (every meta, each cell once)")
    parser.add_argument("--limit", type=int_at_least(1, "--limit"), default=20, help="cells listed per kind of problem (default 20)")


def run_summarize(args: argparse.Namespace) -> int:
    """Handler of ``kvpress-lab summarize``: report on stderr, table on stdout."""
    from kvpress_lab.benchmarks.commands import BenchmarkInputError, check_output_file
    from kvpress_lab.benchmarks.results import append_jsonl
    from kvpress_lab.benchmarks.summarize import merge_sweep_files, report_lines, summary_table

    if args.plot:
        from kvpress_lab.extras import require_extra

        require_extra("bench", "--plot", ("matplotlib",))
    plot = check_output_file("--plot", args.plot) if args.plot else None
    out = check_output_file("--out", args.out) if args.out else None
    if out is not None and (out.exists() or out.resolve() in {pathlib.Path(f).resolve() for f in args.files}):
        raise BenchmarkInputError(f"--out {out} already exists; the merged file must be a new file.")
    try:
        merged = merge_sweep_files(args.files)
    except (FileNotFoundError, ValueError) as exc:
        raise BenchmarkInputError(str(exc)) from None
    for line in report_lines(merged, limit=args.limit):
        print(line, file=sys.stderr)
    table = summary_table(merged)
    if table is not None:
        print(table)
    if out is not None:
        append_jsonl(out, [*merged.metas, *merged.rows])
        print(f"Wrote {out} ({len(merged.rows)} cells)", file=sys.stderr)
    if plot is not None:
        from kvpress_lab.benchmarks.plot import plot_rows

        try:
            written = plot_rows(list(merged.rows), plot, model=", ".join(merged.models) or None)
        except ValueError as exc:
            raise BenchmarkInputError(str(exc)) from None
        print(f"Wrote {written}", file=sys.stderr)
    if merged.missing and not args.allow_missing:
        print(f"kvpress-lab summarize: {len(merged.missing)} cell(s) of the grid are missing: exit status "
              f"{MISSING_STATUS} (--allow-missing to accept)", file=sys.stderr)
        return MISSING_STATUS
    return 0


COMMAND = Command("merge a sweep's shard files: one table, duplicate and missing cells (exit 3 if missing)",
                  add_summarize_arguments, run_summarize,
                  ("kvpress-lab summarize results/needle.shard0-of-2.jsonl results/needle.shard1-of-2.jsonl",
                   "kvpress-lab summarize results/ruler-0.jsonl results/ruler-1.jsonl --plot ruler.png"))
