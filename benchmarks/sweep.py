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
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvpress_lab.benchmarks.results import read_jsonl

__all__ = ["FULL", "Cell", "make_recipe", "plan_cells", "parse_shard", "select_shard", "finished_keys", "check_sweep_file",
           "run_sweep", "aggregate"]

#: Label of the uncompressed baseline (no recipe); it runs once, without a budget.
FULL = "full"


@dataclass(frozen=True)
class Cell:
    """One unit of work: a recipe label, its budget (``None`` for :data:`FULL`) and a sample key."""

    recipe: str
    budget: int | None
    sample: str

    @property
    def key(self) -> str:
        """Stable identifier written with the result, used to skip finished cells."""
        return f"{self.recipe}|{'-' if self.budget is None else self.budget}|{self.sample}"


def make_recipe(name: str, budget: int | None, **overrides: Any) -> Any:
    """``Recipe.preset(name, budget=budget, **overrides)``, or ``None`` for :data:`FULL`."""
    if name == FULL:
        return None
    from kvpress_lab import Recipe

    return Recipe.preset(name, budget=budget, **overrides)


def plan_cells(recipes: Sequence[str], budgets: Sequence[int], samples: Sequence[str]) -> list[Cell]:
    """Every recipe x budget x sample, recipe-major; :data:`FULL` gets one budget-less pass."""
    if not recipes or not samples:
        raise ValueError(f"A sweep needs at least one recipe and one sample, got {len(recipes)} and {len(samples)}.")
    if any(r != FULL for r in recipes) and not budgets:
        raise ValueError("A sweep with compression recipes needs at least one budget.")
    cells: list[Cell] = []
    for recipe in dict.fromkeys(recipes):
        for budget in ([None] if recipe == FULL else list(dict.fromkeys(budgets))):
            cells.extend(Cell(recipe, budget, sample) for sample in samples)
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


def select_shard(cells: Sequence[Cell], shard: tuple[int, int]) -> list[Cell]:
    """The cells whose index ``% n == i``."""
    index, count = shard
    return [cell for position, cell in enumerate(cells) if position % count == index]


def _records(path: pathlib.Path) -> list[dict[str, Any]]:
    def rerun(where: str) -> None:  # a line cut by a crash: its cell simply runs again
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
        Runs one cell and returns its JSON-ready result fields.
    out_path : str or pathlib.Path
        JSON Lines file, created or appended to.
    meta : Mapping
        :func:`~kvpress_lab.benchmarks.results.run_metadata` record, appended once per call:
        with the first finished cell (a call whose first cell fails writes nothing, not even the
        folder), or at the end when no cell was left to run. A file written for another model or
        benchmark is refused (:func:`check_sweep_file`).
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
    handle = None

    def opened() -> Any:
        path.parent.mkdir(parents=True, exist_ok=True)
        cut = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        file = path.open("a", encoding="utf-8")
        if cut:  # a killed job left its last line unterminated: never glue the next record onto it
            file.write("\n")
        file.write(json.dumps({"type": "meta", **meta, "shard": f"{shard[0]}/{shard[1]}"}) + "\n")
        file.flush()
        return file

    try:
        for cell in tqdm(todo, desc=f"sweep {shard[0]}/{shard[1]}", unit="cell", disable=not progress):
            row = {"type": "result", "cell": cell.key, "recipe": cell.recipe, "budget": cell.budget,
                   "sample": cell.sample, **runner(cell)}
            handle = handle or opened()
            handle.write(json.dumps(row, default=repr) + "\n")
            handle.flush()
        handle = handle or opened()
    finally:
        if handle is not None:
            handle.close()
    return {"total": len(mine), "skipped": len(mine) - len(todo), "ran": len(todo)}


def aggregate(rows: Sequence[Mapping[str, Any]], value: str, by: Sequence[str] = ("recipe", "budget")) -> list[dict[str, Any]]:
    """Mean of ``value`` per group of ``by`` (first-seen order), with the group's row count ``n``."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(float(row[value]))
    return [{**dict(zip(by, key)), value: sum(v) / len(v), "n": len(v)} for key, v in groups.items()]
