"""Plots from result rows: needle heatmaps and budget-vs-score curves (matplotlib, Agg backend).

The heatmap follows the PyramidKV paper's needle figure (x = context length, y = needle depth, one
panel per recipe x budget), with a colour-blind-safe, perceptually uniform colour map (cividis:
dark blue 0% -> yellow 100%); cell labels and the colour bar are both accuracy in percent. Curves
use the Okabe-Ito palette and a distinct marker per recipe. Every figure's title states the model,
the evaluation mode and the budgets of its rows (see :func:`figure_title`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from kvpress_lab.benchmarks.sizes import size_label

__all__ = ["HEATMAP_CMAP", "OKABE_ITO", "figure_title", "panel_label", "plot_needle_heatmap", "plot_budget_curves",
           "plot_rows"]

#: Colour map of the needle heatmap: perceptually uniform and readable with colour-vision deficiencies.
HEATMAP_CMAP = "cividis"

#: Okabe & Ito's colour-blind-safe palette (black first; used for the full-cache line).
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
# (yellow last: it is the one with little contrast against a white background)

_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def figure_title(rows: Sequence[Mapping[str, Any]], title: str | None = None, model: str | None = None) -> str:
    """``title`` (default ``"KV-cache compression"``) and a second line: model, mode and budgets of ``rows``.

    ``model`` defaults to the rows' ``model`` values; ``mode`` is read from the rows' ``mode``
    (``query-aware`` when absent, the benchmarks' default); budgets are the distinct non-null
    ``budget`` values, in entries per layer (the full cache has none).
    """
    models = [model] if model else list(dict.fromkeys(str(r["model"]) for r in rows if r.get("model")))
    modes = list(dict.fromkeys(str(r.get("mode") or "query-aware") for r in rows)) or ["query-aware"]
    budgets = sorted({int(r["budget"]) for r in rows if r.get("budget") is not None})
    names = ", ".join(pathlib.PurePath(m).name or m for m in models) or "unknown model"
    ratios = sorted({float(r["compression_ratio"]) for r in rows if r.get("compression_ratio") is not None})
    shown = ", ".join(map(str, budgets)) + " entries/layer" if budgets else "full cache only"
    if ratios:
        shown = (shown + "; " if budgets else "") + "ratio " + ", ".join(f"{r:g}" for r in ratios)
    return f"{title or 'KV-cache compression'}\nmodel {names} | mode {', '.join(modes)}\nbudget {shown}"


def _pyplot():
    from kvpress_lab.extras import require_extra

    require_extra("bench", "drawing a plot", ("matplotlib",))
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def panel_label(recipe: str, budget: int | None) -> str:
    """``"snapkv @ 64"``, or the bare label for a budget-less baseline."""
    return recipe if budget is None else f"{recipe} @ {budget}"


def _ordered(values: Sequence[Any]) -> list[Any]:
    return sorted(set(values), key=lambda v: (isinstance(v, str), v))  # budgets, then "ratio r" labels


def plot_needle_heatmap(rows: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, title: str | None = None,
                        model: str | None = None) -> pathlib.Path:
    """One heatmap panel per recipe x budget of mean ``correct`` over ``length`` x ``depth``.

    Panels are laid out with one row per budget and one column per recipe; budget-less rows (the
    full cache) take the first column of the first row. Each cell shows its accuracy in percent,
    the unit of the colour bar (0-100%); the axis labels are shared by all panels.

    Parameters
    ----------
    rows : sequence of Mapping
        Needle rows with ``recipe``, ``budget``, ``length``, ``depth`` and ``correct``.
    out_path : str or pathlib.Path
        PNG to write (parents created).
    title : str, optional
        First line of the figure title (default ``"Needle in a haystack"``); the second line always
        names the model, mode and budgets (:func:`figure_title`).
    model : str, optional
        Model name for the title (default: the rows' ``model``).
    """
    needed = ("recipe", "budget", "length", "depth", "correct")
    if not rows or any(k not in rows[0] for k in needed):
        raise ValueError(f"needle heatmap needs rows with keys {needed}, got {sorted(rows[0]) if rows else 'no rows'}.")
    plt = _pyplot()
    panels: dict[tuple[str, int | None], dict[tuple[int, float], list[float]]] = {}
    for row in rows:
        cells = panels.setdefault((row["recipe"], size_label(row)), {})  # a budget, or "ratio r"
        cells.setdefault((int(row["length"]), float(row["depth"])), []).append(float(row["correct"]))
    lengths = _ordered([int(r["length"]) for r in rows])
    depths = _ordered([float(r["depth"]) for r in rows])
    # Layout: one row per budget, one column per recipe; budget-less baselines in the first column(s).
    baselines = list(dict.fromkeys(recipe for recipe, budget in panels if budget is None))
    recipes = list(dict.fromkeys(recipe for recipe, budget in panels if budget is not None))
    budgets = _ordered([budget for _, budget in panels if budget is not None])
    columns, lines = len(baselines) + len(recipes), max(1, len(budgets))
    figure, axes = plt.subplots(lines, columns, figsize=(0.9 + (0.75 * len(lengths) + 1.1) * columns,
                                                         0.9 + (0.42 * len(depths) + 0.9) * lines),
                                squeeze=False, constrained_layout=True)
    for axis in axes.flat:
        axis.axis("off")
    cmap = plt.get_cmap(HEATMAP_CMAP)
    image = None
    for (recipe, budget), cells in panels.items():
        if budget is None:
            axis = axes[0][baselines.index(recipe)]
        else:
            axis = axes[budgets.index(budget)][len(baselines) + recipes.index(recipe)]
        axis.axis("on")
        grid = [[100 * _mean(cells.get((length, depth))) for length in lengths] for depth in depths]  # (depths, lengths) %
        image = axis.imshow(grid, cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto")
        for y, line in enumerate(grid):
            for x, value in enumerate(line):
                if value == value:  # not NaN
                    axis.text(x, y, f"{value:.0f}%", ha="center", va="center", fontsize=7,
                              color="black" if value >= 50 else "white")  # cividis is dark below ~50%
        axis.set_title(panel_label(recipe, budget), fontsize=9)
        axis.set_xticks(range(len(lengths)), [str(length) for length in lengths], fontsize=7)
        axis.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths], fontsize=7)
    figure.supxlabel("context length (tokens)", fontsize=8)
    figure.supylabel("needle depth", fontsize=8)
    if image is not None:
        from matplotlib.ticker import PercentFormatter

        bar = figure.colorbar(image, ax=axes, shrink=0.8, format=PercentFormatter(100, decimals=0))
        bar.set_label("accuracy (%)", fontsize=8)
    figure.suptitle(figure_title(rows, title or "Needle in a haystack", model), fontsize=9)
    return _save(figure, out_path)


def _mean(values: Sequence[float] | None) -> float:
    return float("nan") if not values else sum(values) / len(values)


def plot_budget_curves(rows: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, value: str = "score",
                       title: str | None = None, model: str | None = None) -> pathlib.Path:
    """Mean ``value`` against budget, one line per recipe; the full cache as a dashed black line.

    Cells sized by a compression ratio are left out (they have no fixed budget).

    Recipes take the Okabe-Ito colours in order, each with its own marker (readable in grey too).
    """
    if not rows or any(k not in rows[0] for k in ("recipe", "budget", value)):
        raise ValueError(f"budget curves need rows with 'recipe', 'budget' and {value!r}.")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    by_recipe: dict[str, dict[int, list[float]]] = {}
    baseline: list[float] = []
    for row in rows:
        if row.get("compression_ratio") is not None:
            continue  # a ratio cell has no budget on this axis (its size depends on the prompt)
        if row["budget"] is None:
            baseline.append(float(row[value]))
        else:
            by_recipe.setdefault(row["recipe"], {}).setdefault(int(row["budget"]), []).append(float(row[value]))
    for n, (recipe, points) in enumerate(by_recipe.items()):
        budgets = sorted(points)
        axis.plot(budgets, [_mean(points[b]) for b in budgets], marker=_MARKERS[n % len(_MARKERS)],
                  color=OKABE_ITO[1 + n % (len(OKABE_ITO) - 1)], label=recipe)
    if baseline:
        axis.axhline(_mean(baseline), color=OKABE_ITO[0], linestyle="--", linewidth=1, label="full cache")
    axis.set_xscale("log", base=2)
    ticks = sorted({b for points in by_recipe.values() for b in points})
    axis.set_xticks(ticks, [str(b) for b in ticks])
    axis.minorticks_off()
    axis.set_xlabel("KV budget (entries per layer)")
    axis.set_ylabel(value)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.suptitle(figure_title(rows, title, model), fontsize=9)
    return _save(figure, out_path)


def plot_rows(rows: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, title: str | None = None,
              model: str | None = None) -> pathlib.Path:
    """Needle rows -> heatmap; rows with a ``score`` -> budget curves (``bench speed`` rows: :mod:`.plot_speed`)."""
    if rows and "depth" in rows[0] and "correct" in rows[0]:
        return plot_needle_heatmap(rows, out_path, title, model=model)
    if rows and "score" in rows[0]:
        return plot_budget_curves(rows, out_path, "score", title, model=model)
    raise ValueError("Nothing to plot: expected needle rows (depth, correct) or scored rows (recipe, budget, score).")


def _save(figure: Any, out_path: str | pathlib.Path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    path = pathlib.Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path
