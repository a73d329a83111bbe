"""Leaderboard statistics: mean score, prompts and a 95% interval per task, length, mode, recipe and size.

The interval of a cell whose every score is 0 or 100 (one right-or-wrong answer per prompt) is
Wilson's score interval of the share right, which stays honest at 0/20 and 20/20; otherwise
(scores with partial credit, e.g. RULER's variable tracking) it is Student's t interval of the
mean, clipped to [0, 100].

Examples
--------
>>> low, high = interval([100.0] * 20)
>>> round(low, 1), high
(83.9, 100.0)
>>> [round(x, 1) for x in interval([0.0, 50.0, 100.0, 50.0])]
[0.0, 100.0]
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Z95", "HEADLINE", "interval", "summary_rows", "write_summary_csv", "size_of", "SUMMARY_COLUMNS", "family_table",
           "write_family_csv", "plot_family", "truncated_needles", "build_leaderboard"]

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054

#: Columns of ``summary.csv``, in order.
SUMMARY_COLUMNS = ("family", "task", "length", "mode", "recipe", "size", "n", "mean", "low", "high")

# Student's t quantiles (two-sided 95%) for small degrees of freedom; the normal quantile beyond.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
        21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
        40: 2.021, 60: 2.000, 120: 1.980}


def _t95(df: int) -> float:
    if df in _T95:
        return _T95[df]
    larger = [d for d in _T95 if d > df]
    return _T95[min(larger)] if larger else Z95


def interval(scores: Sequence[float]) -> tuple[float, float]:
    """95% interval of the mean of ``scores`` (each in [0, 100]); see the module docstring."""
    n = len(scores)
    if n == 0:
        raise ValueError("an interval needs at least one score.")
    if all(s in (0.0, 100.0) for s in scores):
        p = sum(s == 100.0 for s in scores) / n
        z2 = Z95 * Z95
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return 100 * min(p, max(0.0, centre - half)), 100 * max(p, min(1.0, centre + half))  # p itself inside, despite rounding
    mean = sum(scores) / n
    if n == 1:
        return 0.0, 100.0
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = _t95(n - 1) * sd / math.sqrt(n)
    return max(0.0, mean - half), min(100.0, mean + half)


def size_of(row: Mapping[str, Any]) -> str:
    """A row's size as tables show it: ``full``, ``ratio 0.5``, ``budget 128`` or ``threshold`` (a budget-free preset)."""
    if row.get("compression_ratio") is not None:
        return f"ratio {row['compression_ratio']:g}"
    if row.get("budget") is not None:
        return f"budget {row['budget']}"
    return "full" if row.get("recipe") == "full" else "threshold"  # a budget-free preset: each input keeps what scores above it


def summary_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per (family, task, length, mode, recipe, size): ``n``, ``mean``, ``low``, ``high`` (first-seen order)."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        key = (row.get("family"), row.get("task"), row.get("length"), row.get("mode"), row.get("recipe"), size_of(row))
        groups.setdefault(key, []).append(float(row["score"]))
    out = []
    for key, scores in groups.items():
        low, high = interval(scores)
        out.append({**dict(zip(SUMMARY_COLUMNS[:6], key)), "n": len(scores), "mean": sum(scores) / len(scores),
                    "low": low, "high": high})
    return out


def write_summary_csv(summary: Sequence[Mapping[str, Any]], path: str | pathlib.Path) -> pathlib.Path:
    """``summary`` as CSV (means and bounds with one decimal); its path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        for record in summary:
            writer.writerow([*(record[c] if record[c] is not None else "" for c in SUMMARY_COLUMNS[:7]),
                             *(f"{record[c]:.1f}" for c in ("mean", "low", "high"))])
    return path


# ---------------------------------------------------------------------------------------------
# The results page: one table and one figure per task family
# ---------------------------------------------------------------------------------------------

#: The methods the heatmaps and the ratio sweeps show (kvpress's leaderboard protocol: ratios 0.25 / 0.5 / 0.75).
HEADLINE = ("snapkv", "pyramidkv", "streamingllm", "h2o", "kvzip", "keydiff", "expected-attention")


def _size_order(size: str) -> tuple:
    """Sizes from the largest cache to the smallest: full, ratios ascending, then budgets descending."""
    if size == "full":
        return (0, 0.0)
    if size == "threshold":
        return (3, 0.0)
    kind, value = size.split(" ")
    return (1, float(value)) if kind == "ratio" else (2, -float(value))


def family_table(summary: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """``(header, lines)``: one line per method, one column per size, cells ``mean [low, high]`` (n in the header).

    ``summary`` holds the records of one family (one task, length and mode). The full cache is the
    first line; methods follow in first-seen order. A column's header gives its number of prompts
    when every cell has the same, else each cell does.
    """
    sizes = sorted({r["size"] for r in summary if r["recipe"] != "full"}, key=_size_order)
    methods = list(dict.fromkeys(r["recipe"] for r in summary))
    methods.sort(key=lambda m: m != "full")
    cells = {(r["recipe"], "full" if r["recipe"] == "full" else r["size"]): r for r in summary}
    columns = ["full", *sizes] if any(r["recipe"] == "full" for r in summary) else sizes
    counts = {size: {r["n"] for (m, s), r in cells.items() if s == size} for size in columns}
    header = ["method", *(f"{size} (n={next(iter(counts[size]))})" if len(counts[size]) == 1 else size
                          for size in columns)]
    lines = []
    for method in methods:
        line = [method]
        for size in columns:
            record = cells.get((method, size))
            if record is None or (size == "full") != (method == "full"):
                line.append("")
                continue
            shown = f"{record['mean']:.0f} [{record['low']:.0f}, {record['high']:.0f}]"
            line.append(shown if len(counts[size]) == 1 else f"{shown} (n={record['n']})")
        lines.append(line)
    return header, lines


def write_family_csv(summary: Sequence[Mapping[str, Any]], path: str | pathlib.Path) -> pathlib.Path:
    """:func:`family_table` as a CSV file (what the results page includes); its path."""
    header, lines = family_table(summary)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *lines])
    return path


def plot_family(summary: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, title: str,
                methods: Sequence[str] | None = None) -> pathlib.Path:
    """Mean score per size (x: from the largest cache to the smallest), one line per method, the full cache as a line.

    Every method has its own colour *and* marker (tab20 colours, ten markers); the 95% intervals
    are drawn as bars. ``methods`` restricts (and orders) the methods drawn; default every one.
    """
    from kvpress_lab.benchmarks.plot import _pyplot, _save

    plt = _pyplot()
    shown = [m for m in (methods or dict.fromkeys(r["recipe"] for r in summary)) if m != "full"]
    sizes = sorted({r["size"] for r in summary if r["recipe"] in shown}, key=_size_order)
    figure, axis = plt.subplots(figsize=(7.2, 4.6), constrained_layout=True)
    colours = plt.get_cmap("tab20").colors
    markers = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
    offset = 0.3 / max(1, len(shown))
    for n, method in enumerate(shown):
        points = [(i, r) for i, size in enumerate(sizes) for r in summary if r["recipe"] == method and r["size"] == size]
        if not points:
            continue
        xs = [i + (n - len(shown) / 2) * offset for i, _ in points]  # side by side, so bars and markers do not hide
        axis.errorbar(xs, [r["mean"] for _, r in points],
                      yerr=[[r["mean"] - r["low"] for _, r in points], [r["high"] - r["mean"] for _, r in points]],
                      color=colours[(2 * n) % 20 + (n // 10) % 2], marker=markers[n % len(markers)], markersize=6,
                      linewidth=1.2, elinewidth=0.6, capsize=2, label=method)
    full = [r for r in summary if r["recipe"] == "full"]
    if full:
        axis.axhline(full[0]["mean"], color="black", linestyle="--", linewidth=1.2,
                     label=f"full cache ({full[0]['mean']:.0f}, n={full[0]['n']})")
        axis.axhspan(full[0]["low"], full[0]["high"], color="black", alpha=0.06)
    axis.set_xticks(range(len(sizes)), [s.replace("ratio ", "ratio\n").replace("budget ", "budget\n") for s in sizes])
    axis.set_xlabel("cache size: compression ratio (fraction of entries removed) or budget (entries per layer)")
    axis.set_ylabel("score (%), 95% interval")
    axis.set_ylim(-3, 103)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2 if len(shown) > 8 else 1, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.suptitle(title, fontsize=9)
    return _save(figure, out_path)


def truncated_needles(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """``[task, length, mode, method, size, prompts, wrong answers that are the needle's first digits]`` per cell.

    An answer counts when it scores 0 and its digits are a proper prefix, 3 digits or more, of a
    numeric needle (``6057.`` for ``6057437``): the model found the needle but its cache kept
    only the first digits. Rows without a numeric first answer are skipped.
    """
    counts: dict[tuple, list[int]] = {}
    for row in rows:
        answers = row.get("answers") or []
        if not answers or not str(answers[0]).isdigit():
            continue
        digits = "".join(ch for ch in str(row.get("output", "")) if ch.isdigit())
        entry = counts.setdefault((row.get("task"), row.get("length"), row.get("mode"), row["recipe"], size_of(row)), [0, 0])
        entry[0] += 1
        entry[1] += row["score"] == 0 and 3 <= len(digits) < len(answers[0]) and answers[0].startswith(digits)
    return [[*key, n, cut] for key, (n, cut) in counts.items() if cut]


def _needle_rows(path: pathlib.Path, mode: str) -> list[dict[str, Any]]:
    """A needle result file's rows as scored rows (``score`` = 100 x ``correct``) of family ``needle``."""
    from kvpress_lab.benchmarks.results import read_rows

    return [{**row, "family": "needle", "task": "needle", "mode": mode, "score": 100.0 * bool(row["correct"])}
            for row in read_rows(path)]


def build_leaderboard(results_dir: str | pathlib.Path = "results/docs") -> list[pathlib.Path]:
    """Write the results page's tables and figures from the committed result files under ``results_dir``.

    - ``leaderboard/ruler-full-cache.csv``: the full cache's score on every RULER task, length and mode;
    - ``leaderboard/<task>-<length>-<mode>.csv`` and ``.png`` for every RULER family of
      ``ruler/results.jsonl`` (``kvpress-lab eval results/docs/ruler/eval.yaml``), the figure
      drawn for the methods with a ratio sweep when the family has one, else for every method;
    - ``leaderboard/needle-<mode>.csv`` and ``.png`` from the two needle files (6 prompts per cell);
    - ``needle-query-agnostic/needle_heatmap.png``: the heatmap of the headline methods only.
    """
    from kvpress_lab.benchmarks.plot import plot_needle_heatmap
    from kvpress_lab.benchmarks.results import read_rows

    root = pathlib.Path(results_dir)
    out = root / "leaderboard"
    written: list[pathlib.Path] = []
    ruler = root / "ruler" / "results.jsonl"
    families: dict[tuple, list[dict[str, Any]]] = {}
    if ruler.exists():
        for record in summary_rows([r for r in read_rows(ruler) if r.get("score") is not None]):
            families.setdefault((record["task"], record["length"], record["mode"]), []).append(record)
    full = [r for summary in families.values() for r in summary if r["recipe"] == "full"]
    if full:
        path = out / "ruler-full-cache.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["task", "length", "mode", "prompts", "full-cache score [95% interval]"])
            for r in full:
                writer.writerow([r["task"], r["length"], r["mode"], r["n"], f"{r['mean']:.0f} [{r['low']:.0f}, {r['high']:.0f}]"])
        written.append(path)
    if ruler.exists():
        cut = truncated_needles([r for r in read_rows(ruler) if r.get("score") is not None and r.get("recipe") != "full"])
        if cut:
            path = out / "ruler-truncated-needles.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([["task", "length", "mode", "method", "size", "prompts",
                                               "wrong answers: only the needle's first digits"],
                                              *sorted(cut, key=lambda line: (line[:3], -line[6]))])
            written.append(path)
    for (task, length, mode), summary in families.items():
        stem = out / f"{task}-{length}-{mode}"
        written.append(write_family_csv(summary, stem.with_suffix(".csv")))
        swept = [m for m in dict.fromkeys(r["recipe"] for r in summary)
                 if sum(1 for r in summary if r["recipe"] == m and r["size"].startswith("ratio")) > 1]
        if len({r["recipe"] for r in summary}) > 1:
            title = f"lm-eval {task}, {length} tokens, {mode}: SmolLM2-135M-Instruct (CPU)"
            written.append(plot_family(summary, stem.with_suffix(".png"), title, methods=swept or None))
    for mode, name in (("query-aware", "needle-query-aware/needle.json"),
                       ("query-agnostic", "needle-query-agnostic/needle.jsonl")):
        if not (root / name).exists():
            continue
        rows = _needle_rows(root / name, mode)
        summary = summary_rows([{**r, "length": None} for r in rows])  # one family over every length and depth
        written.append(write_family_csv(summary, out / f"needle-{mode}.csv"))
        written.append(plot_family(summary, out / f"needle-{mode}.png",
                                   f"needle in a haystack (kvpress_lab's generator), {mode}: SmolLM2-135M-Instruct (CPU)"))
        if mode == "query-agnostic":
            keep = ("full", "snapkv", "keydiff", "kvzip")  # a window scorer, a cheap and a costly query-agnostic one
            chosen = [r for r in rows if r["recipe"] in keep and size_of(r) in ("full", "budget 128", "ratio 0.5")]
            written.append(plot_needle_heatmap(chosen, root / "needle-query-agnostic" / "needle_heatmap.png",
                                               title="Needle in a haystack, query-agnostic (a few methods)",
                                               model="SmolLM2-135M-Instruct"))
    return written


if __name__ == "__main__":
    import sys

    for path in build_leaderboard(sys.argv[1] if len(sys.argv) > 1 else "results/docs"):
        print(f"Wrote {path}")
