"""``bench speed`` rows -> one PNG: prefill time and KV bytes after prefill against prompt length.

Each ``(recipe, budget)`` is one line (the full cache dashed, in black), the two panels share the
length axis; the values are the rows' own (``prefill_s``: median over the repeats).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from kvpress_lab.benchmarks.plot import _MARKERS, OKABE_ITO, _pyplot, _save, figure_title, panel_label

__all__ = ["SPEED_FIELDS", "is_speed_rows", "plot_speed"]

#: Fields every ``bench speed`` row has (see :mod:`kvpress_lab.benchmarks.speed`).
SPEED_FIELDS = ("recipe", "budget", "length", "prefill_s", "kv_bytes_after")


def is_speed_rows(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``rows`` are ``bench speed`` rows (every field of :data:`SPEED_FIELDS`)."""
    return bool(rows) and all(field in rows[0] for field in SPEED_FIELDS)


def plot_speed(rows: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, title: str | None = None,
               model: str | None = None) -> pathlib.Path:
    """Prefill seconds (top) and KV MiB after prefill (bottom) against prompt tokens, one line per recipe and budget."""
    if not is_speed_rows(rows):
        raise ValueError(f"speed plots need rows with {', '.join(repr(f) for f in SPEED_FIELDS)}.")
    lines: dict[str, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        lines.setdefault(panel_label(row["recipe"], row["budget"]), {})[int(row["length"])] = row
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6.4, 6.0), constrained_layout=True)
    for n, (label, points) in enumerate(lines.items()):
        lengths = sorted(points)
        full = points[lengths[0]]["budget"] is None
        style = {"color": OKABE_ITO[0], "linestyle": "--"} if full else {
            "color": OKABE_ITO[1 + n % (len(OKABE_ITO) - 1)], "marker": _MARKERS[n % len(_MARKERS)]}
        name = "full cache" if full else label
        top.plot(lengths, [float(points[t]["prefill_s"]) for t in lengths], label=name, **style)
        bottom.plot(lengths, [float(points[t]["kv_bytes_after"]) / 2**20 for t in lengths], label=name, **style)
    top.set_ylabel("prefill (s)")
    bottom.set_ylabel("KV cache after prefill (MiB)")
    bottom.set_xlabel("prompt tokens")
    ticks = sorted({t for points in lines.values() for t in points})
    bottom.set_xticks(ticks, [str(t) for t in ticks])
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    top.legend(fontsize=8)
    figure.suptitle(figure_title(rows, title or "Speed and KV size", model), fontsize=9)
    return _save(figure, out_path)
