"""Plots from result rows: needle heatmaps and budget-vs-score curves (matplotlib, Agg backend).

The heatmap follows the PyramidKV paper's needle figure: x = context length, y = needle depth,
colour = accuracy (red 0 -> yellow -> green 1), one panel per recipe x budget.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["panel_label", "plot_needle_heatmap", "plot_budget_curves", "plot_rows"]

_PAPER_COLOURS = ("#F0496E", "#EBB839", "#0CD79F")  # the needle figure's red / yellow / green


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def panel_label(recipe: str, budget: int | None) -> str:
    """``"snapkv @ 64"``, or the bare label for a budget-less baseline."""
    return recipe if budget is None else f"{recipe} @ {budget}"


def _ordered(values: Sequence[Any]) -> list[Any]:
    return sorted(set(values))


def plot_needle_heatmap(rows: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, title: str | None = None) -> pathlib.Path:
    """One heatmap panel per recipe x budget of mean ``correct`` over ``length`` x ``depth``.

    Panels are laid out with one row per budget and one column per recipe; budget-less rows (the
    full cache) take the first column of the first row. Each cell shows its accuracy in percent.

    Parameters
    ----------
    rows : sequence of Mapping
        Needle rows with ``recipe``, ``budget``, ``length``, ``depth`` and ``correct``.
    out_path : str or pathlib.Path
        PNG to write (parents created).
    """
    needed = ("recipe", "budget", "length", "depth", "correct")
    if not rows or any(k not in rows[0] for k in needed):
        raise ValueError(f"needle heatmap needs rows with keys {needed}, got {sorted(rows[0]) if rows else 'no rows'}.")
    from matplotlib.colors import LinearSegmentedColormap

    plt = _pyplot()
    panels: dict[tuple[str, int | None], dict[tuple[int, float], list[float]]] = {}
    for row in rows:
        cells = panels.setdefault((row["recipe"], row["budget"]), {})
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
    cmap = LinearSegmentedColormap.from_list("needle", list(_PAPER_COLOURS))
    image = None
    for (recipe, budget), cells in panels.items():
        if budget is None:
            axis = axes[0][baselines.index(recipe)]
        else:
            axis = axes[budgets.index(budget)][len(baselines) + recipes.index(recipe)]
        axis.axis("on")
        grid = [[_mean(cells.get((length, depth))) for length in lengths] for depth in depths]  # (depths, lengths)
        image = axis.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        for y, line in enumerate(grid):
            for x, value in enumerate(line):
                if value == value:  # not NaN
                    axis.text(x, y, f"{100 * value:.0f}", ha="center", va="center", fontsize=7, color="black")
        axis.set_title(panel_label(recipe, budget), fontsize=9)
        axis.set_xticks(range(len(lengths)), [str(length) for length in lengths], fontsize=7)
        axis.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths], fontsize=7)
        axis.set_xlabel("context length (tokens)", fontsize=7)
        axis.set_ylabel("needle depth", fontsize=7)
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, out_path)


def _mean(values: Sequence[float] | None) -> float:
    return float("nan") if not values else sum(values) / len(values)


def plot_budget_curves(rows: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, value: str = "score",
                       title: str | None = None) -> pathlib.Path:
    """Mean ``value`` against budget, one line per recipe; the full cache as a dashed line."""
    if not rows or any(k not in rows[0] for k in ("recipe", "budget", value)):
        raise ValueError(f"budget curves need rows with 'recipe', 'budget' and {value!r}.")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4), constrained_layout=True)
    by_recipe: dict[str, dict[int, list[float]]] = {}
    baseline: list[float] = []
    for row in rows:
        if row["budget"] is None:
            baseline.append(float(row[value]))
        else:
            by_recipe.setdefault(row["recipe"], {}).setdefault(int(row["budget"]), []).append(float(row[value]))
    for recipe, points in by_recipe.items():
        budgets = sorted(points)
        axis.plot(budgets, [_mean(points[b]) for b in budgets], marker="o", label=recipe)
    if baseline:
        axis.axhline(_mean(baseline), color="black", linestyle="--", linewidth=1, label="full cache")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("KV budget (entries per layer)")
    axis.set_ylabel(value)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title)
    return _save(figure, out_path)


def plot_rows(rows: Sequence[Mapping[str, Any]], out_path: str | pathlib.Path, title: str | None = None) -> pathlib.Path:
    """Needle rows -> heatmap; rows with a ``score`` -> budget curves."""
    if rows and "depth" in rows[0] and "correct" in rows[0]:
        return plot_needle_heatmap(rows, out_path, title)
    if rows and "score" in rows[0]:
        return plot_budget_curves(rows, out_path, "score", title)
    raise ValueError("Nothing to plot: expected needle rows (depth, correct) or scored rows (recipe, budget, score).")


def _save(figure: Any, out_path: str | pathlib.Path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    path = pathlib.Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path
