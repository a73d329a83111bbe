"""Sweeps over recipes x budgets x samples: resumable, shardable, one JSON line per finished cell.

A sweep is a list of :class:`Cell`. :func:`run_sweep` runs the cells of one shard
(``index % n == i``) that its output file does not already hold, appending each result as soon
as it is done, so an interrupted sweep resumes where it stopped and ``n`` machines (or jobs of
any scheduler) can share one grid, each writing its own file or taking turns on one.

Examples
--------
>>> cells = plan_cells(["full", "snapkv"], [64, 128], ["a", "b"])
>>> [c.key for c in cells][:3]
['full|-|a', 'full|-|b', 'snapkv|64|a']
>>> [c.key for c in select_shard(cells, parse_shard("1/2"))]
['full|-|b', 'snapkv|64|b', 'snapkv|128|b']
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvpress_lab.benchmarks.results import append_jsonl, first_report_of_bad_line, read_jsonl
from kvpress_lab.recipe_labels import FULL, CacheSize, budget_free

__all__ = ["FULL", "Cell", "plan_cells", "parse_shard", "shard_from_env", "select_shard", "grid_record",
           "grid_keys", "finished_keys", "check_sweep_file", "run_sweep", "aggregate"]

@dataclass(frozen=True)
class Cell:
    """One unit of work: a recipe label, its :class:`~kvpress_lab.recipe_labels.CacheSize` (none for
    :data:`~kvpress_lab.recipe_labels.FULL`) and a sample key."""

    recipe: str
    size: CacheSize
    sample: str

    @property
    def key(self) -> str:
        """Stable identifier written with the result, used to skip finished cells: ``label|size|sample``."""
        return f"{self.recipe}|{self.size.key}|{self.sample}"

    @property
    def budget(self) -> int | None:
        """The cell's budget (``None`` for the full cache, a budget-free preset or a ratio)."""
        return self.size.budget


def plan_cells(recipes: Sequence[str], budgets: Sequence[int], samples: Sequence[str],
               ratios: Sequence[float] = ()) -> list[Cell]:
    """Every recipe x size x sample, recipe-major (budgets, then compression ratios).

    :data:`~kvpress_lab.recipe_labels.FULL` and budget-free presets get one pass without a size.
    """
    if not recipes or not samples:
        raise ValueError(f"A sweep needs at least one recipe and one sample, got {len(recipes)} and {len(samples)}.")
    if any(r != FULL for r in recipes) and not budgets and not ratios:
        raise ValueError("A sweep with compression recipes needs at least one budget.")
    sizes = [CacheSize(budget=b) for b in dict.fromkeys(budgets)] + [CacheSize(ratio=r) for r in dict.fromkeys(ratios)]
    cells: list[Cell] = []
    for recipe in dict.fromkeys(recipes):
        for size in ([CacheSize()] if budget_free(recipe) else sizes):
            cells.extend(Cell(recipe, size, sample) for sample in samples)
    return cells


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse ``"i/n"`` (``0 <= i < n``); ``None`` means the whole sweep, ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n with integers, e.g. 0/4, got {text!r}.") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard i/n needs n >= 1 and 0 <= i < n, got {text!r}.")
    return index, count


def _pair_set(environ: Mapping[str, str], names: tuple[str, str], why_both: str) -> bool:
    """Whether both variables of ``names`` are set; one without the other is a ``ValueError``."""
    present = [name for name in names if name in environ]
    if len(present) == 1:
        other = next(name for name in names if name not in environ)
        raise ValueError(f"{present[0]}={environ[present[0]]!r} is set but {other} is not; {why_both}. "
                         "Pass --shard i/n explicitly.")
    return len(present) == 2


def _env_int(environ: Mapping[str, str], name: str, why: str) -> int:
    text = environ[name]
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer, so the shard cannot be taken from the environment "
                         f"({why}); fix the variable or pass --shard i/n explicitly.") from None


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[tuple[int, int], str] | None:
    """The shard a scheduler assigned to this process, from its environment variables.

    - SLURM job arrays: ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``; the index is
      ``(ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`` (MIN 0 and STEP 1 when unset), so
      ``--array=1-16`` and ``--array=0-30:2`` both give shards 0..n-1.
    - torchrun and accelerate: ``RANK`` and ``WORLD_SIZE``.
    - Both (torchrun inside each task of an array): shard ``array_index * WORLD_SIZE + RANK`` of
      ``COUNT * WORLD_SIZE``, so every process gets its own cells.

    Parameters
    ----------
    environ : Mapping[str, str] or None
        Default ``os.environ``.

    Returns
    -------
    tuple or None
        ``((i, n), description)`` naming the variables used, or ``None`` when none is set.

    Raises
    ------
    ValueError
        A variable that is not an integer, one of a pair without the other, or an index outside
        ``[0, n)``; the message names the variables and their values.
    """
    environ = os.environ if environ is None else environ
    parts: list[tuple[int, int, str]] = []
    if _pair_set(environ, ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"), "a SLURM array task needs both to pick its shard"):
        why = "SLURM job array"
        task, count = _env_int(environ, "SLURM_ARRAY_TASK_ID", why), _env_int(environ, "SLURM_ARRAY_TASK_COUNT", why)
        low = _env_int(environ, "SLURM_ARRAY_TASK_MIN", why) if "SLURM_ARRAY_TASK_MIN" in environ else 0
        step = _env_int(environ, "SLURM_ARRAY_TASK_STEP", why) if "SLURM_ARRAY_TASK_STEP" in environ else 1
        shown = f"SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_COUNT={count}, SLURM_ARRAY_TASK_MIN={low}, " \
                f"SLURM_ARRAY_TASK_STEP={step}"
        if step < 1 or (task - low) % step:
            raise ValueError(f"{shown}: the task id is not MIN + k * STEP; pass --shard i/n explicitly.")
        index = (task - low) // step
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"{shown}: the task's index (ID - MIN) / STEP = {index} is not in [0, COUNT); "
                             "pass --shard i/n explicitly.")
        parts.append((index, count, shown))
    if _pair_set(environ, ("RANK", "WORLD_SIZE"), "torchrun and accelerate set both"):
        why = "torchrun / accelerate"
        rank, world = _env_int(environ, "RANK", why), _env_int(environ, "WORLD_SIZE", why)
        shown = f"RANK={rank}, WORLD_SIZE={world}"
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"{shown}: RANK must be in [0, WORLD_SIZE); pass --shard i/n explicitly.")
        parts.append((rank, world, shown))
    if not parts:
        return None
    index, count = 0, 1
    for part_index, part_count, _ in parts:
        index, count = index * part_count + part_index, count * part_count
    return (index, count), "; ".join(shown for _, _, shown in parts)


def select_shard(cells: Sequence[Cell], shard: tuple[int, int]) -> list[Cell]:
    """The cells whose index ``% n == i``."""
    index, count = shard
    return [cell for position, cell in enumerate(cells) if position % count == index]


def grid_record(cells: Sequence[Cell]) -> dict[str, Any]:
    """The whole sweep's cells, compactly, for the meta record (what ``summarize`` checks coverage against).

    ``{"cells": N, "recipes": {label: [budgets]}, "samples": [...]}`` when the cells are every
    recipe-budget x sample (as :func:`plan_cells` makes them), else ``{"cells": N, "keys": [...]}``.
    """
    recipes: dict[str, list[int | str | None]] = {}  # label -> the sizes' slot values (64, "r0.5", None)
    for cell in cells:
        if cell.size.value not in recipes.setdefault(cell.recipe, []):
            recipes[cell.recipe].append(cell.size.value)
    samples = list(dict.fromkeys(cell.sample for cell in cells))
    record: dict[str, Any] = {"cells": len(cells), "recipes": recipes, "samples": samples}
    if grid_keys(record) != [cell.key for cell in cells]:
        return {"cells": len(cells), "keys": [cell.key for cell in cells]}
    return record


def grid_keys(grid: Mapping[str, Any]) -> list[str]:
    """The cell keys a :func:`grid_record` describes, in sweep order.

    Raises
    ------
    ValueError
        A grid that is not one :func:`grid_record` writes (a damaged meta line), saying what is wrong.
    """
    if not isinstance(grid, Mapping):
        raise ValueError(f"the grid must be a JSON object, got {type(grid).__name__}")
    if "keys" in grid:
        keys = grid["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"grid 'keys' must be a list of cell keys (strings), got {json.dumps(keys)[:80]}")
        return list(keys)
    recipes, samples = grid.get("recipes"), grid.get("samples")
    if not isinstance(recipes, Mapping) or not all(isinstance(b, list) for b in recipes.values()):
        raise ValueError(f"grid 'recipes' must map each recipe to its list of budgets, got {json.dumps(recipes)[:80]}")
    if not isinstance(samples, list):
        raise ValueError(f"grid 'samples' must be a list of sample keys, got {json.dumps(samples)[:80]}")
    return [Cell(recipe, CacheSize.parse(size), sample).key for recipe, sizes in recipes.items() for size in sizes
            for sample in samples]


def _records(path: pathlib.Path) -> list[dict[str, Any]]:
    def rerun(where: str) -> None:  # a line cut by a crash: its cell simply runs again; said once per process
        if first_report_of_bad_line(where):
            print(f"warning: {where} is not valid JSON (interrupted write?); that cell will be rerun.")

    return read_jsonl(path, on_bad_line=rerun)


def finished_keys(path: str | pathlib.Path) -> set[str]:
    """Keys of the cells already in a sweep file."""
    return {r["cell"] for r in _records(pathlib.Path(path)) if r.get("type") == "result" and "cell" in r}


def check_sweep_file(path: str | pathlib.Path, **expected: Any) -> None:
    """Refuse to append to a sweep file whose meta records differ from ``expected`` (``model=``, ``benchmark=``).

    Raises
    ------
    ValueError
        Naming the key, both values and what to do.
    """
    path = pathlib.Path(path)
    for old in (r for r in _records(path) if r.get("type") == "meta"):
        for key, value in expected.items():
            if old.get(key) != value:
                raise ValueError(
                    f"{path} holds results of {key}={old.get(key)!r}, this run has {key}={value!r}; "
                    "use another --out file to keep sweeps apart."
                )


def run_sweep(
    cells: Sequence[Cell],
    runner: Callable[[Cell], Mapping[str, Any]],
    out_path: str | pathlib.Path,
    meta: Mapping[str, Any],
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> dict[str, int]:
    """Run this shard's unfinished cells, appending ``{"type": "result", "cell": key, ...}`` lines.

    Parameters
    ----------
    cells : sequence of Cell
        The whole sweep (every shard), in a fixed order.
    runner : Callable[[Cell], Mapping]
        Runs one cell and returns its JSON-ready result fields. A runner with a ``plan(todo)``
        method gets this shard's unfinished cells first and returns the order to run them in
        (:class:`~kvpress_lab.benchmarks.sample_groups.SampleGroups`: sample-major, so that a
        sample's cells share one prefill); each cell is still appended as soon as it is done.
    out_path : str or pathlib.Path
        JSON Lines file, created or appended to.
    meta : Mapping
        :func:`~kvpress_lab.benchmarks.results.run_metadata` record, appended once per call:
        with the first finished cell (a call whose first cell fails writes nothing, not even the
        folder), or at the end when no cell was left to run; it gains ``shard`` and ``grid``
        (:func:`grid_record` of every shard's cells). A file written for another model or
        benchmark is refused (:func:`check_sweep_file`). Every append takes the file's lock
        (:func:`~kvpress_lab.benchmarks.results.append_jsonl`), so several shards may share one file.
    shard : tuple of int
        ``(i, n)`` from :func:`parse_shard`.

    Returns
    -------
    dict
        ``{"total": cells in this shard, "skipped": already finished, "ran": run now}``.
    """
    from tqdm.auto import tqdm

    path = pathlib.Path(out_path)
    check_sweep_file(path, model=meta.get("model"), benchmark=meta.get("benchmark"))
    done = finished_keys(path)
    mine = select_shard(cells, shard)
    todo = [cell for cell in mine if cell.key not in done]
    if hasattr(runner, "plan"):  # a runner that groups cells (one shared prefill per sample) orders them itself
        todo = list(runner.plan(todo))
    header = {"type": "meta", **meta, "shard": f"{shard[0]}/{shard[1]}", "grid": grid_record(cells)}
    pending = [header]  # written with the first finished cell, or alone at the end
    for cell in tqdm(todo, desc=f"sweep {shard[0]}/{shard[1]}", unit="cell", disable=not progress):
        row = {"type": "result", "cell": cell.key, "recipe": cell.recipe, **cell.size.row_fields(),
               "sample": cell.sample, **runner(cell)}
        append_jsonl(path, [*pending, row])  # locked: other processes may append to the same file
        pending = []
    append_jsonl(path, pending)
    return {"total": len(mine), "skipped": len(mine) - len(todo), "ran": len(todo)}


def aggregate(rows: Sequence[Mapping[str, Any]], value: str, by: Sequence[str] = ("recipe", "budget")) -> list[dict[str, Any]]:
    """Mean of ``value`` per group of ``by`` (first-seen order), with the group's row count ``n``."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(float(row[value]))
    return [{**dict(zip(by, key)), value: sum(v) / len(v), "n": len(v)} for key, v in groups.items()]
