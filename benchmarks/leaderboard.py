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

__all__ = ["Z95", "interval", "summary_rows", "write_summary_csv", "size_of", "SUMMARY_COLUMNS"]

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
        return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)
    mean = sum(scores) / n
    if n == 1:
        return 0.0, 100.0
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = _t95(n - 1) * sd / math.sqrt(n)
    return max(0.0, mean - half), min(100.0, mean + half)


def size_of(row: Mapping[str, Any]) -> str:
    """A row's size as tables show it: ``full``, ``ratio 0.5`` or ``budget 128``."""
    if row.get("compression_ratio") is not None:
        return f"ratio {row['compression_ratio']:g}"
    if row.get("budget") is not None:
        return f"budget {row['budget']}"
    return "full" if row.get("recipe") == "full" else "-"


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
