"""Merge the shard files of one sweep: one table, duplicate cells and missing cells reported.

:func:`merge_sweep_files` reads sweep files (JSON Lines written by ``bench needle|ruler|longbench``,
one per shard or shared), keeps each cell once and compares the whole set with the grid the meta
records hold (``grid``, written by :func:`~kvpress_lab.benchmarks.sweep.run_sweep`):

- a *duplicate* is one cell key found more than once (two files, or twice in one file). Copies
  whose fields agree, timings (``*_s``, nested ones included) aside, are *identical* (a note); copies that differ are
  *conflicting* (a warning naming the files and the fields); the first copy, in the order the
  files were given, is kept;
- a *missing* cell is in a recorded grid but in no file (a shard that did not run, or died);
- an *unexpected* cell is in a file but in no recorded grid.

Examples
--------
>>> import json, pathlib, tempfile
>>> from kvpress_lab.benchmarks.sweep import grid_record, plan_cells
>>> cells = plan_cells(["full"], [], ["a", "b"])
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> meta = {"type": "meta", "benchmark": "fake", "model": "m", "grid": grid_record(cells)}
>>> _ = (folder / "s0.jsonl").write_text(json.dumps(meta) + "\\n" + json.dumps(
...     {"type": "result", "cell": "full|-|a", "score": 1.0}) + "\\n")
>>> merged = merge_sweep_files([folder / "s0.jsonl"])
>>> merged.missing, len(merged.rows)
(('full|-|b',), 1)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from kvpress_lab.benchmarks.results import read_jsonl
from kvpress_lab.benchmarks.sweep import grid_keys

__all__ = ["Duplicate", "MergedSweep", "merge_sweep_files", "report_lines", "summary_table"]


@dataclasses.dataclass(frozen=True)
class Duplicate:
    """One cell key found more than once.

    Parameters
    ----------
    key : str
        The cell key.
    files : tuple of str
        The file of each copy, in reading order (a file appears twice if it holds two copies).
    differing : tuple of str
        Fields whose values differ between the copies, timings (``*_s``) left out; empty when
        the copies are identical.
    """

    key: str
    files: tuple[str, ...]
    differing: tuple[str, ...]

    @property
    def identical(self) -> bool:
        """Whether every copy has the same fields and values (timings aside)."""
        return not self.differing


@dataclasses.dataclass(frozen=True)
class MergedSweep:
    """The merged result of several sweep files (see the module docstring)."""

    benchmark: str | None
    models: tuple[str, ...]
    files: tuple[str, ...]
    metas: tuple[dict[str, Any], ...]
    rows: tuple[dict[str, Any], ...]
    expected: int | None
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    duplicates: tuple[Duplicate, ...]
    notes: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """No missing cell (``True`` as well when no file recorded its grid: nothing to compare)."""
        return not self.missing


def _compared(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` without its timings: ``*_s`` keys, at any depth (``shared_prefill`` nests its own)."""
    return {key: _compared(value) if isinstance(value, Mapping) else value
            for key, value in row.items() if not key.endswith("_s")}


def merge_sweep_files(paths: Sequence[str | pathlib.Path]) -> MergedSweep:
    """Read ``paths`` (sweep ``.jsonl`` files) and merge them; see the module docstring.

    Raises
    ------
    FileNotFoundError
        A path that is not a file.
    ValueError
        A file that is not a sweep file (no meta or result line), or files of different
        benchmarks or models (they do not form one sweep); the message names the files.
    """
    notes: list[str] = []
    metas: list[dict[str, Any]] = []
    copies: dict[str, list[tuple[dict[str, Any], str]]] = {}  # cell key -> every (row, file) holding it, first first
    sources: dict[str, dict[str, list[str]]] = {"benchmark": {}, "model": {}}  # what each file says it ran
    for path in map(pathlib.Path, paths):
        file_metas, results = _read_sweep_file(path, notes)
        for meta in file_metas:
            for what, seen in sources.items():
                seen.setdefault(str(meta.get(what)), []).append(str(path))
        metas.extend(file_metas)
        for row in results:
            copies.setdefault(str(row["cell"]), []).append((row, str(path)))
    for what, seen in sources.items():
        if len(seen) > 1:
            shown = "; ".join(f"{what}={name!r} in {', '.join(dict.fromkeys(files))}" for name, files in seen.items())
            raise ValueError(f"these files are not one sweep: {shown}. Summarize each {what} separately.")
    configs = {json.dumps(m.get("config"), sort_keys=True, default=repr) for m in metas}
    if len(configs) > 1:
        differing = sorted({key for m in metas for key in (m.get("config") or {})
                            if len({json.dumps((n.get("config") or {}).get(key), default=repr) for n in metas}) > 1})
        notes.append(f"warning: the runs recorded different settings ({', '.join(differing)}); check that the files "
                     "belong to the same sweep")
    expected = _expected_cells(metas, notes)
    expected_set = set(expected or ())
    return MergedSweep(
        benchmark=next(iter(sources["benchmark"]), None),
        models=tuple(sources["model"]),
        files=tuple(str(p) for p in paths),
        metas=tuple(metas),
        rows=tuple(found[0][0] for found in copies.values()),
        expected=None if expected is None else len(expected),
        missing=tuple(key for key in (expected or ()) if key not in copies),
        unexpected=tuple(key for key in copies if expected is not None and key not in expected_set),
        duplicates=tuple(_duplicate(key, found) for key, found in copies.items() if len(found) > 1),
        notes=tuple(notes),
    )


def _read_sweep_file(path: pathlib.Path, notes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The meta and result lines of one sweep file (a note for its skipped lines), its grids checked."""
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.jsonl"))
        raise ValueError(f"{path} is a folder; summarize takes sweep files: pass them, e.g. {path}/*.jsonl "
                         f"({len(inside)} .jsonl file(s) there{': ' + ', '.join(inside[:3]) if inside else ''}).")
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist.")
    skipped: list[str] = []
    try:
        records = read_jsonl(path, on_bad_line=skipped.append)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text sweep file: {exc}") from None
    if skipped:
        notes.append(f"{path}: skipped {len(skipped)} line(s) that are not valid JSON (cut by a killed job?): "
                     f"{', '.join(where.rsplit(':', 1)[1] for where in skipped)}")
    metas = [r for r in records if isinstance(r, dict) and r.get("type") == "meta"]
    results = [r for r in records if isinstance(r, dict) and r.get("type") == "result" and "cell" in r]
    if not metas and not results:
        raise ValueError(f"{path} is not a sweep file: no line with \"type\": \"meta\" or \"result\" (summarize "
                         "merges the .jsonl files of bench needle|ruler|longbench).")
    for meta in metas:
        if "grid" in meta:
            try:
                grid_keys(meta["grid"])
            except ValueError as exc:
                raise ValueError(f"{path}: a meta line records a damaged grid ({exc}); restore the file from its "
                                 "shard's output, or remove that meta line (its cells then count as unexpected).") from None
    return metas, results


def _duplicate(key: str, found: list[tuple[dict[str, Any], str]]) -> Duplicate:
    """A cell held by several files, and the fields in which their rows differ."""
    reference = _compared(found[0][0])
    differing = sorted({field for row, _ in found[1:] for field in set(reference) | set(_compared(row))
                        if reference.get(field, KeyError) != _compared(row).get(field, KeyError)})
    return Duplicate(key, tuple(path for _, path in found), tuple(differing))


def _expected_cells(metas: list[dict[str, Any]], notes: list[str]) -> list[str] | None:
    """The union of the grids the files record (``None`` when none does), with notes on what is uncertain."""
    grids = [meta["grid"] for meta in metas if "grid" in meta]
    if not grids:
        notes.append("note: no file records its sweep's grid (written by an older kvpress_lab); missing cells "
                     "cannot be checked")
        return None
    distinct = {json.dumps(g, sort_keys=True) for g in grids}
    expected = list(dict.fromkeys(key for grid in grids for key in grid_keys(grid)))
    if len(distinct) > 1:
        notes.append(f"note: the runs recorded {len(distinct)} different grids; expected cells = their union "
                     f"({len(expected)})")
    if len(grids) < len(metas):
        notes.append("note: some runs recorded no grid (written by an older kvpress_lab)")
    return expected


def _files(files: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for name in files:
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(name if n == 1 else f"{name} ({n}x)" for name, n in counts.items())


def report_lines(merged: MergedSweep, limit: int = 20) -> list[str]:
    """The human-readable report: counts, then duplicates, missing and unexpected cells (``limit`` of each shown)."""
    expected = "?" if merged.expected is None else str(merged.expected)
    lines = [f"{merged.benchmark} sweep of {', '.join(merged.models) or '?'}: {len(merged.rows)} of {expected} cells "
             f"from {len(merged.files)} file(s), {len(merged.metas)} run(s); {len(merged.missing)} missing, "
             f"{len(merged.duplicates)} duplicated, {len(merged.unexpected)} not in the grid"]
    lines += list(merged.notes)
    identical = [d for d in merged.duplicates if d.identical]
    conflicting = [d for d in merged.duplicates if not d.identical]
    for d in conflicting[:limit]:
        lines.append(f"warning: cell {d.key} has conflicting copies in {_files(d.files)}: {', '.join(d.differing)} "
                     f"differ; the copy from {d.files[0]} is kept")
    if len(conflicting) > limit:
        lines.append(f"warning: ... and {len(conflicting) - limit} more conflicting cells")
    for d in identical[:limit]:
        lines.append(f"note: cell {d.key} appears {len(d.files)} times, identically (timings aside), in {_files(d.files)}")
    if len(identical) > limit:
        lines.append(f"note: ... and {len(identical) - limit} more identical duplicates")
    for title, keys in (("missing", merged.missing), ("not in the grid", merged.unexpected)):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            lines.append(f"{title}: {shown}")
    return lines


def summary_table(merged: MergedSweep) -> str | None:
    """The benchmark's table of the merged rows (needle: accuracy per recipe; scored tasks: per task), if any."""
    from kvpress_lab.benchmarks.tables import needle_summary, needle_table, score_table

    rows = list(merged.rows)
    if not rows:
        return None
    if all("correct" in r and "depth" in r for r in rows):
        return needle_table(needle_summary(rows))
    if all("score" in r for r in rows):
        return score_table(rows, "task" if all("task" in r for r in rows) else "recipe")
    return None
