"""``kvpress-lab summarize``: shard files merged, duplicate and missing cells found, exit status 3 when missing."""

from __future__ import annotations

import json

import pytest

from kvpress_lab.benchmarks.results import read_meta, read_rows
from kvpress_lab.benchmarks.summarize import merge_sweep_files
from kvpress_lab.benchmarks.sweep import Cell, plan_cells, run_sweep
from kvpress_lab.cli import main
from kvpress_lab.cli.summarize import MISSING_STATUS

META = {"benchmark": "ruler", "model": "tiny", "seed": 0, "config": {"mode": "query-aware"}}
CELLS = plan_cells(["full", "snapkv"], [32, 64], ["a", "b", "c"])  # 3 + 6 = 9 cells


def runner(cell: Cell) -> dict:
    return {"task": "t", "score": 100.0 if cell.budget is None else float(cell.budget), "prefill_s": 0.1}


def shard_files(folder, count=3):
    files = [folder / f"s{index}.jsonl" for index in range(count)]
    for index, path in enumerate(files):
        run_sweep(CELLS, runner, path, META, shard=(index, count), progress=False)
    return files


def test_shard_files_merge_into_one_complete_table(tmp_path, capsys):
    files = shard_files(tmp_path)
    merged = merge_sweep_files(files)
    assert sorted(r["cell"] for r in merged.rows) == sorted(c.key for c in CELLS)
    assert merged.expected == 9 and merged.missing == () and merged.duplicates == () and merged.complete
    assert main(["summarize", *map(str, files)]) == 0
    captured = capsys.readouterr()
    assert "9 of 9 cells from 3 file(s), 3 run(s); 0 missing, 0 duplicated" in captured.err
    assert "snapkv" in captured.out and "average" in captured.out


def test_missing_cells_are_listed_and_exit_with_status_3(tmp_path, capsys):
    files = shard_files(tmp_path)
    assert main(["summarize", str(files[0]), str(files[2])]) == MISSING_STATUS == 3
    err = capsys.readouterr().err
    lost = [c.key for n, c in enumerate(CELLS) if n % 3 == 1]
    assert f"missing: {', '.join(lost)}" in err and "3 missing" in err
    assert main(["summarize", str(files[0]), str(files[2]), "--allow-missing"]) == 0


def test_identical_duplicates_are_a_note_and_conflicting_ones_a_warning_naming_the_files(tmp_path, capsys):
    files = shard_files(tmp_path)
    again = tmp_path / "again.jsonl"
    rows = [dict(r, prefill_s=9.9) for r in read_rows(files[0])]  # a rerun of shard 0: other timings only
    rows[1]["score"] = -1.0  # ... and one cell that came out differently
    again.write_text("".join(json.dumps(x) + "\n" for x in [*read_meta(files[0]), *rows]))
    merged = merge_sweep_files([*files, again])
    assert len(merged.rows) == 9 and len(merged.duplicates) == 3
    conflicting = [d for d in merged.duplicates if not d.identical]
    assert [(d.key, d.files, d.differing) for d in conflicting] == [(rows[1]["cell"], (str(files[0]), str(again)),
                                                                    ("score",))]
    assert {r["cell"]: r["score"] for r in merged.rows}[rows[1]["cell"]] != -1.0  # the first copy is kept
    assert main(["summarize", *map(str, files), str(again)]) == 0
    err = capsys.readouterr().err
    assert f"warning: cell {rows[1]['cell']} has conflicting copies in {files[0]}, {again}: score differ" in err
    assert f"note: cell {rows[0]['cell']} appears 2 times, identically (timings aside), in {files[0]}, {again}" in err


def test_a_cell_twice_in_one_file_is_a_duplicate(tmp_path):
    files = shard_files(tmp_path, count=1)
    with files[0].open("a") as handle:
        handle.write(json.dumps(read_rows(files[0])[0]) + "\n")
    (duplicate,) = merge_sweep_files(files).duplicates
    assert duplicate.files == (str(files[0]), str(files[0])) and duplicate.identical


def test_cut_line_is_reported_and_its_cell_counted_missing(tmp_path, capsys):
    files = shard_files(tmp_path, count=1)
    text = files[0].read_text()
    files[0].write_text(text[: text.rstrip("\n").rfind("\n") + 1] + text.rstrip("\n").rsplit("\n", 1)[1][:15])
    assert main(["summarize", str(files[0])]) == MISSING_STATUS
    err = capsys.readouterr().err
    assert "skipped 1 line(s) that are not valid JSON" in err and f"missing: {CELLS[-1].key}" in err


def test_merged_file_and_plot(tmp_path, capsys):
    files = shard_files(tmp_path)
    out, png = tmp_path / "merged.jsonl", tmp_path / "merged.png"
    assert main(["summarize", *map(str, files), "--out", str(out), "--plot", str(png)]) == 0
    assert sorted(r["cell"] for r in read_rows(out)) == sorted(c.key for c in CELLS) and len(read_meta(out)) == 3
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["summarize", *map(str, files), "--out", str(out)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"benchmark": "needle"}, "benchmark='ruler' in"),
    ({"model": "other"}, "model='tiny' in"),
])
def test_files_of_different_sweeps_are_refused(tmp_path, capsys, change, message):
    files = shard_files(tmp_path, count=2)
    run_sweep(CELLS, runner, tmp_path / "other.jsonl", {**META, **change}, progress=False)
    assert main(["summarize", *map(str, files), str(tmp_path / "other.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvpress-lab summarize: error: these files are not one sweep") and message in err


def test_files_that_are_not_sweep_files(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n')
    assert main(["summarize", str(tmp_path / "x.jsonl")]) == 2
    assert "is not a sweep file" in capsys.readouterr().err
    assert main(["summarize", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
