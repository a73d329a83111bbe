"""Terminal tables and the summaries they show (needle accuracy, speed and memory).

Examples
--------
>>> print(format_table(["a", "bb"], [[1, "x"], [22, "yy"]]))
a   bb
--  --
1   x
22  yy
>>> human_bytes(3 * 2**20)
'3.0 MiB'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from kvpress_lab.benchmarks.sizes import size_label

__all__ = ["format_table", "human_bytes", "needle_summary", "needle_table", "speed_table", "score_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned plain-text table with a dashed rule under the headers."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    rule = ["-" * w for w in widths]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [cells[0], rule, *cells[1:]])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def human_bytes(count: float | None) -> str:
    """``1536 -> '1.5 KiB'``."""
    if count is None or (isinstance(count, float) and math.isnan(count)):
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def needle_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per recipe x budget: accuracy, cells, mean prefill seconds, mean KV bytes and share of full.

    Rows of a compression ratio instead of a budget are grouped and labelled ``"ratio r"``
    (:func:`~kvpress_lab.benchmarks.sizes.size_label`) in the ``budget`` field.
    """
    groups: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
    for row in rows:  # a budget, or "ratio r" for a compression-ratio row
        groups.setdefault((row["recipe"], size_label(row)), []).append(row)
    full = groups.get(("full", None))
    full_bytes = sum(r["kv_bytes"] for r in full) / len(full) if full else None
    out = []
    for (recipe, budget), group in groups.items():
        kv = sum(r["kv_bytes"] for r in group) / len(group)
        out.append({
            "recipe": recipe, "budget": budget, "cells": len(group),
            "accuracy": sum(bool(r["correct"]) for r in group) / len(group),
            "prefill_s": sum(r["prefill_s"] for r in group) / len(group),
            "kv_bytes": kv, "kv_share": kv / full_bytes if full_bytes else None,
        })
    return out


def needle_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """Table of :func:`needle_summary`."""
    headers = ["recipe", "budget", "accuracy", "cells", "prefill s (mean)", "KV bytes (mean)", "KV vs full"]
    body = [[s["recipe"], s["budget"], f"{100 * s['accuracy']:.0f}%", s["cells"], f"{s['prefill_s']:.2f}",
             human_bytes(s["kv_bytes"]), "-" if s["kv_share"] is None else f"{100 * s['kv_share']:.1f}%"]
            for s in summary]
    return format_table(headers, body)


def speed_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table of :func:`~kvpress_lab.benchmarks.speed.measure_speed` rows; "roles % prefill" is ``roles_share``."""
    headers = ["T", "recipe", "budget", "prefill s", "overhead s", "roles % prefill", "decode ms/step", "KV before",
               "KV after", "peak RSS MiB", "CUDA peak MiB"]
    body = [[r["prompt_tokens"], r["recipe"], r["budget"], f"{r['prefill_s']:.2f}", f"{r['overhead_s']:+.2f}",
             "-" if r.get("roles_share") is None else f"{100 * r['roles_share']:.1f}%",
             f"{1000 * r['decode_step_s']:.1f}", human_bytes(r["kv_bytes_before"]), human_bytes(r["kv_bytes_after"]),
             f"{r['peak_rss_mb']:.0f}", "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"]
            for r in rows]
    return format_table(headers, body)


def score_table(rows: Sequence[Mapping[str, Any]], column: str = "task") -> str:
    """Mean ``score`` per recipe x budget (rows) and ``column`` value (columns), plus their average."""
    columns = list(dict.fromkeys(r[column] for r in rows))
    groups: dict[tuple[str, Any], dict[str, list[float]]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], size_label(r)), {}).setdefault(r[column], []).append(float(r["score"]))
    body = []
    for (recipe, budget), per in groups.items():
        means = [sum(per[c]) / len(per[c]) if c in per else None for c in columns]
        present = [m for m in means if m is not None]
        body.append([recipe, budget, *[None if m is None else round(m, 2) for m in means],
                     round(sum(present) / len(present), 2) if present else None])
    return format_table(["recipe", "budget", *columns, "average"], body)
