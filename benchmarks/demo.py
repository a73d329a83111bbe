"""The README's main job: needle in a haystack, full cache vs compressed caches, on the embedded model.

``kvpress-lab demo`` loads the embedded SmolLM2-135M-Instruct (no download), runs the
query-aware needle test on a small grid for the full cache and for StreamingLLM, H2O, SnapKV and
PyramidKV at two budgets, prints a table (accuracy, mean prefill time, KV bytes), and writes a
heatmap PNG and a JSON result file. Each prompt is prefilled once for the full cache and every
recipe (:func:`~kvpress_lab.compress_many`); the default grid takes about a minute on one CPU core.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvpress_lab.benchmarks.defaults import (
    DEFAULT_BUDGETS, DEFAULT_DEPTHS, DEFAULT_LENGTHS, DEFAULT_RECIPES, DEFAULT_SHARE,
)
from kvpress_lab.benchmarks.needle import run_needle
from kvpress_lab.benchmarks.plot import plot_needle_heatmap
from kvpress_lab.benchmarks.results import model_settings, run_metadata, write_result_file
from kvpress_lab.benchmarks.commands import recipe_entries
from kvpress_lab.recipe_labels import FULL, CacheSize
from kvpress_lab.benchmarks.tables import needle_summary, needle_table

__all__ = ["DEFAULT_LENGTHS", "DEFAULT_DEPTHS", "DEFAULT_BUDGETS", "DEFAULT_RECIPES", "DemoResult", "run_demo"]



@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    table: str
    json_path: pathlib.Path
    heatmap_path: pathlib.Path
    seconds: float


def run_demo(
    model_name: str | None = None,
    out_dir: str | pathlib.Path = "results/demo",
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    recipes: Sequence[str] = DEFAULT_RECIPES,
    seed: int = 0,
    max_new_tokens: int = 8,
    model: Any = None,
    tokenizer: Any = None,
    progress: bool = True,
    echo: bool = True,
    ratios: Sequence[float] = (),
    share: int | None = DEFAULT_SHARE,
) -> DemoResult:
    """Run the needle comparison and write ``needle.json`` and ``needle_heatmap.png`` to ``out_dir``.

    Parameters
    ----------
    model_name : str or None
        ``--model``: the embedded model's name (default) or a local/hub checkpoint.
    out_dir : str or pathlib.Path
        Folder for the JSON and PNG files.
    lengths, depths, budgets : sequence
        Needle grid (prompt tokens x depth in [0, 1]) and budgets (entries per layer).
    recipes : sequence of str
        Preset names; the full cache always runs as the reference.
    model, tokenizer : optional
        An already loaded model (tests, notebooks); ``model_name`` is then only recorded.
    echo : bool
        Print progress lines and the table.
    ratios : sequence of float
        Compression ratios (kvpress's convention: fraction of the prompt's entries removed) run
        as well as the budgets, labelled ``ratio r`` in the table and the heatmap.
    share : int or None
        Recipes compressed from one shared prefill of each prompt (``--share-prefill``; ``None``:
        one prefill per cell, ``--no-share-prefill``). Same answers either way; see
        :mod:`~kvpress_lab.benchmarks.shared_generation` for how ``prefill_s`` is then reported.
    """
    from kvpress_lab.models import EMBEDDED_MODEL_NAME, load_model

    start = time.perf_counter()
    model_name = model_name or EMBEDDED_MODEL_NAME
    built = recipe_entries([name for name in recipes if name != FULL], [int(b) for b in budgets], ratios)
    entries: list[tuple[str, CacheSize, Any]] = [(FULL, CacheSize(), None)]
    entries += [(label, size, recipe) for (label, size), recipe in built.items()]
    if model is None or tokenizer is None:
        if echo:
            print(f"Loading {model_name} ...", flush=True)
        model, tokenizer = load_model(model_name)
    device = str(next(model.parameters()).device)
    if echo:
        print(f"Needle in a haystack (query-aware): lengths {list(lengths)} x depths {list(depths)}, "
              f"{len(entries)} recipe/budget pairs, {device}.", flush=True)
    rows = run_needle(model, tokenizer, entries, lengths, depths, seed=seed, max_new_tokens=max_new_tokens,
                      progress=progress, share=share)
    summary = needle_summary(rows)
    table = needle_table(summary)
    out = pathlib.Path(out_dir)
    meta = run_metadata(
        "demo", model_name, {f"{label}@{size.value}": recipe for label, size, recipe in entries}, seed=seed,
        **model_settings(model), config={"task": "needle", "mode": "query-aware", "lengths": list(lengths), "depths": list(depths),
                "budgets": list(budgets), "ratios": list(ratios), "recipes": list(recipes), "max_new_tokens": max_new_tokens,
                "share_prefill": share},
    )
    json_path = write_result_file(out / "needle.json", meta, rows, summary)
    heatmap = plot_needle_heatmap(rows, out / "needle_heatmap.png",
                                  title="Needle in a haystack", model=str(model_name))
    seconds = time.perf_counter() - start
    if echo:
        print()
        print(table)
        print(f"\nWrote {json_path} and {heatmap} in {seconds:.0f} s.")
    return DemoResult(rows, summary, table, json_path, heatmap, seconds)
