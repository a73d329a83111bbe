"""``kvpress-lab plot``: result files -> one PNG (needle heatmap, budget-vs-score or speed curves)."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from kvpress_lab.cli.command import Command

__all__ = ["COMMAND", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="result files: .json from demo (needle heatmap) and bench speed (time "
                                                 "and KV size against length), .jsonl from bench needle (heatmap), "
                                                 "ruler and longbench (budget-vs-score curves)")
    parser.add_argument("--out", help="PNG to write (default: the first file with .png)")
    parser.add_argument("--task", help="keep only rows of this task (ruler/longbench files)")
    parser.add_argument("--title", help="figure title (default: model, mode and budget of the rows)")


def run(args: argparse.Namespace) -> int:
    """Needle rows -> heatmap; scored rows -> budget-vs-score curves; speed rows -> time and KV size curves."""
    from kvpress_lab.extras import require_extra

    require_extra("bench", "plotting", ("matplotlib",))
    from kvpress_lab.benchmarks.commands import BenchmarkInputError, check_output_file
    from kvpress_lab.benchmarks.plot import plot_rows
    from kvpress_lab.benchmarks.plot_speed import is_speed_rows, plot_speed

    rows, models = _read(args.files)
    if args.task is not None:
        rows = [r for r in rows if r.get("task") == args.task]
    out = check_output_file("--out", args.out) if args.out else pathlib.Path(args.files[0]).with_suffix(".png")
    draw = plot_speed if is_speed_rows(rows) else plot_rows  # bench speed files: time and KV size against length
    try:
        written = draw(rows, out, title=args.title, model=", ".join(dict.fromkeys(models)) or None)
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from exc
    print(f"Wrote {written} from {len(rows)} rows.")
    return 0


def _read(files: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every row of ``files`` and the models their meta records name."""
    from kvpress_lab.benchmarks.commands import BenchmarkInputError
    from kvpress_lab.benchmarks.results import read_meta, read_rows

    rows: list[dict[str, Any]] = []
    models: list[str] = []
    for name in files:
        path = pathlib.Path(name)
        if not path.is_file():
            raise BenchmarkInputError(f"result file {path} does not exist.")
        try:
            rows += read_rows(path)
            models += [str(meta["model"]) for meta in read_meta(path) if meta.get("model")]
        except json.JSONDecodeError as exc:
            raise BenchmarkInputError(f"{path} is not JSON: {exc}") from exc
        except (ValueError, KeyError, AttributeError) as exc:  # JSON, but not a result file (or not text)
            message = str(exc) if str(path) in str(exc) else f"{path} is not a kvpress_lab result file: {exc}"
            raise BenchmarkInputError(message) from exc
    return rows, models


COMMAND = Command("result files -> PNG (needle heatmap, budget-vs-score or speed curves)", add_arguments, run,
                  ("kvpress-lab plot results/demo/needle.json", "kvpress-lab plot results/speed.json",
                   "kvpress-lab plot results/ruler.jsonl --task variable_tracking --out ruler-vt.png"))
