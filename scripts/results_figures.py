"""Figures of the documentation's results page that ``kvpress-lab plot`` does not draw.

Usage (what ``scripts/make_results.sh`` runs)::

    python scripts/results_figures.py funnel OUT_DIR [--length 2048] [--prompts 4]
    python scripts/results_figures.py curves RESULT_FILE OUT_PNG
    python scripts/results_figures.py table RESULT_FILE OUT_CSV COLUMN [COLUMN ...]

``funnel`` measures the attention funnel of the embedded SmolLM2-135M-Instruct on synthetic
prompts (:func:`kvpress_lab.analysis.attention_funnel`) and writes ``funnel.json`` and
``funnel.png``; ``curves`` draws needle accuracy against the budget, one line per recipe, from a
needle result file (``.json`` from ``kvpress-lab demo`` or ``.jsonl`` from ``kvpress-lab bench needle``);
``table`` writes a CSV of the mean of each COLUMN per (recipe, budget[, length]) of a result file,
which the results page includes as it is (no number is typed by hand).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def funnel(out_dir: pathlib.Path, length: int, prompts: int) -> None:
    import torch

    from kvpress_lab.analysis import attention_funnel, plot_funnel, synthetic_prompts
    from kvpress_lab.models import load_model

    model, tokenizer = load_model(attn_implementation="eager")
    batch = torch.stack(synthetic_prompts(tokenizer, prompts, length, seed=0))
    with torch.no_grad():
        report = attention_funnel(model, batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"argv": sys.argv, "length": length, "prompts": prompts, "report": json.loads(report.to_json())}
    (out_dir / "funnel.json").write_text(json.dumps(record, indent=2) + "\n")
    plot_funnel(report, out_dir / "funnel.png")
    print(f"Wrote {out_dir / 'funnel.json'} and {out_dir / 'funnel.png'}")


def curves(result: pathlib.Path, out_png: pathlib.Path) -> None:
    from kvpress_lab.benchmarks.plot import plot_budget_curves
    from kvpress_lab.benchmarks.results import read_meta, read_rows

    rows = read_rows(result)
    model = next((m["model"] for m in read_meta(result) if m.get("model")), None)
    plot_budget_curves(rows, out_png, value="correct", model=model)
    print(f"Wrote {out_png}")


def table(result: pathlib.Path, out_csv: pathlib.Path, columns: list[str], by_length: bool) -> None:
    import csv
    import statistics

    from kvpress_lab.benchmarks.results import read_rows
    from kvpress_lab.benchmarks.sizes import size_label

    groups: dict[tuple, list[dict]] = {}
    for row in read_rows(result):
        key = (row["recipe"], size_label(row)) + ((row.get("length"),) if by_length else ())
        groups.setdefault(key, []).append(row)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["recipe", "budget", *(["length"] if by_length else []), "rows", *columns])
        for key, rows in groups.items():
            cells = []
            for column in columns:
                values = [float(r[column]) for r in rows if r.get(column) is not None]
                cells.append(_format(column, statistics.fmean(values)) if values else "")
            writer.writerow([key[0], "full" if key[1] is None else key[1], *key[2:], len(rows), *cells])
    print(f"Wrote {out_csv}")


def _format(column: str, value: float) -> str:
    if column == "correct":
        return f"{100 * value:.0f}%"
    if "bytes" in column:
        return f"{value / 2**20:.1f} MiB"
    if column.endswith("_mb"):
        return f"{value:.0f}"
    if column.endswith("_s"):
        return f"{value:.3f}"
    return f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("funnel")
    f.add_argument("out_dir", type=pathlib.Path)
    f.add_argument("--length", type=int, default=2048)
    f.add_argument("--prompts", type=int, default=4)
    c = sub.add_parser("curves")
    c.add_argument("result", type=pathlib.Path)
    c.add_argument("out_png", type=pathlib.Path)
    t = sub.add_parser("table")
    t.add_argument("result", type=pathlib.Path)
    t.add_argument("out_csv", type=pathlib.Path)
    t.add_argument("columns", nargs="+")
    t.add_argument("--by-length", action="store_true")
    args = parser.parse_args()
    if args.what == "funnel":
        funnel(args.out_dir, args.length, args.prompts)
    elif args.what == "curves":
        curves(args.result, args.out_png)
    else:
        table(args.result, args.out_csv, args.columns, args.by_length)


if __name__ == "__main__":
    main()
