"""Misusing the command line and result files on the newer surfaces: sharing with chunking, summarize's
inputs, and a disk that fills up while results are written.

Every mistake is one line on stderr with the documented exit status (no traceback), or correct
behaviour; a write that fails loses nothing already written, and a rerun completes the sweep.
"""

from __future__ import annotations

import errno
import json
import pathlib

import pytest
from helpers.cli_errors import one_line_error
from helpers.refuse_loading import ModelLoaded, refuse_loading, tiny_loaded  # noqa: F401 (fixtures)

from kvpress_lab.benchmarks.results import ResultsWriteError, append_jsonl, write_result_file
from kvpress_lab.benchmarks.summarize import merge_sweep_files
from kvpress_lab.benchmarks.sweep import Cell, plan_cells, run_sweep
from kvpress_lab.cli import main

META = {"benchmark": "ruler", "model": "tiny", "seed": 0, "config": {"mode": "query-aware"}}
CELLS = plan_cells(["full", "snapkv"], [32], ["a", "b"])


# -- --share-prefill with --prefill-chunk (silent 8) ---------------------------------------------------------------


@pytest.mark.parametrize("task", ["needle", "ruler"])
def test_sharing_asked_for_with_a_chunked_prefill_is_a_usage_error(capsys, tmp_path, task):
    out = tmp_path / "out.jsonl"
    err = one_line_error(capsys, ["bench", task, "--share-prefill", "4", "--prefill-chunk", "16", "--recipes", "snapkv",
                                  "--out", str(out), "--no-progress"], 2)
    assert "--share-prefill 4" in err and "--prefill-chunk 16" in err and "drop one of them" in err
    assert not out.exists()


@pytest.mark.parametrize("share", [[], ["--share-prefill", "1"], ["--no-share-prefill"]])
def test_a_chunked_prefill_without_asked_sharing_still_loads(tmp_path, share):
    with pytest.raises(ModelLoaded):  # past every check: the default sharing simply does not apply to chunked cells
        main(["bench", "needle", *share, "--prefill-chunk", "16", "--recipes", "snapkv", "--out", str(tmp_path / "o.jsonl"),
              "--no-progress"])


# -- summarize's inputs (obscure 5, 11) ----------------------------------------------------------------------------


def _runner(cell: Cell) -> dict:
    return {"task": "t", "score": 1.0, "prefill_s": 0.1,
            "shared_prefill": {"pass_s": 0.3, "forward_s": 0.2, "compress_s": 0.05, "recipes": 2}}


def test_identical_reruns_with_nested_timings_are_identical_copies(tmp_path, capsys):
    """Timings inside the nested shared_prefill record used to make identical reruns 'conflicting copies'."""
    first, again = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_sweep(CELLS, _runner, first, META, progress=False)
    run_sweep(CELLS, lambda cell: {**_runner(cell), "prefill_s": 0.2,
                                   "shared_prefill": {**_runner(cell)["shared_prefill"], "pass_s": 0.9}}, again, META,
              progress=False)
    merged = merge_sweep_files([first, again])
    assert len(merged.duplicates) == len(CELLS) and all(d.identical for d in merged.duplicates)
    assert main(["summarize", str(first), str(again)]) == 0
    assert "conflicting" not in capsys.readouterr().err
    changed = tmp_path / "c.jsonl"  # a real difference inside the nested record still shows
    run_sweep(CELLS, lambda cell: {**_runner(cell), "shared_prefill": {**_runner(cell)["shared_prefill"], "recipes": 3}},
              changed, META, progress=False)
    assert all(d.differing == ("shared_prefill",) for d in merge_sweep_files([first, changed]).duplicates)


def test_summarize_on_a_folder_says_it_is_a_folder(capsys, tmp_path):
    run_sweep(CELLS, _runner, tmp_path / "s0.jsonl", META, progress=False)
    err = one_line_error(capsys, ["summarize", str(tmp_path)], 2)  # an input the user pointed at: exit 2
    assert f"{tmp_path} is a folder" in err and "s0.jsonl" in err


@pytest.mark.parametrize(("grid", "fragment"), [
    ({"recipes": ["full"], "samples": ["a"]}, "grid 'recipes' must map each recipe"),
    ({"recipes": {"full": 3}, "samples": ["a"]}, "grid 'recipes' must map each recipe"),
    ({"recipes": {"full": [None]}}, "grid 'samples' must be a list"),
    ({"keys": "full|-|a"}, "grid 'keys' must be a list of cell keys"),
    ([1, 2], "the grid must be a JSON object, got list"),
    ("grid", "the grid must be a JSON object, got str"),
])
def test_a_damaged_grid_names_the_file(capsys, tmp_path, grid, fragment):
    path = tmp_path / "s0.jsonl"
    run_sweep(CELLS, _runner, path, META, progress=False)
    lines = path.read_text().splitlines()
    meta = json.loads(lines[0])
    meta["grid"] = grid
    path.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n")
    err = one_line_error(capsys, ["summarize", str(path)], 2)
    assert f"{path}: a meta line records a damaged grid" in err and fragment in err


# -- a full disk while results are written (obscure 9) -------------------------------------------------------------


class _FullDisk:
    """A file whose writes fail once ``room`` bytes have been written (the disk is full)."""

    room = 0

    def __init__(self, real):
        self.real = real

    def write(self, data):
        if len(data) > _FullDisk.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        _FullDisk.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``pathlib.Path.open`` gives files on a disk with ``_FullDisk.room`` bytes left (set by the test)."""
    real_open = pathlib.Path.open
    monkeypatch.setattr(pathlib.Path, "open", lambda self, *a, **k: _FullDisk(real_open(self, *a, **k)))
    _FullDisk.room = 0
    return _FullDisk


def test_a_full_disk_is_a_clear_error_naming_the_file(tmp_path, full_disk):
    path = tmp_path / "rows.jsonl"
    with pytest.raises(ResultsWriteError, match=f"could not write results to {path}: No space left on device "
                                                "\\(the disk is full\\). Rows written before are intact"):
        append_jsonl(path, [{"type": "result", "cell": "a"}])
    with pytest.raises(ResultsWriteError, match="the disk is full"):
        write_result_file(tmp_path / "r.json", {k: 0 for k in ("benchmark", "model", "recipes", "versions", "plugins",
                                                                 "seed", "timestamp", "device")}, [])
    assert isinstance(ResultsWriteError("x"), OSError)  # code catching OSError still catches it


def test_a_sweep_stopped_by_a_full_disk_loses_nothing_and_resumes(capsys, tmp_path, full_disk, tiny_loaded):
    out = tmp_path / "needle.jsonl"
    argv = ["bench", "needle", "--lengths", "128", "--depths", "0.25,0.75", "--recipes", "full,snapkv", "--budgets",
            "32", "--out", str(out), "--no-progress", "--max-new-tokens", "1", "--no-share-prefill"]
    full_disk.room = 10 ** 9
    assert main(argv) == 0
    want = sorted(json.dumps({k: v for k, v in r.items() if not k.endswith("_s")}, sort_keys=True)
                  for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "result")
    out.unlink()
    capsys.readouterr()
    full_disk.room = 1500  # the meta line and about a row fit
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("kvpress-lab bench: error: "), err
    assert f"could not write results to {out}" in err and "the disk is full" in err and "rerun the same command" in err
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line for line in out.read_text().splitlines())  # every line written is whole
    full_disk.room = 10 ** 9
    assert main(argv) == 0  # the rerun runs the missing cells only
    rows = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "result"]
    assert len(rows) == len(want) and len({r["cell"] for r in rows}) == len(want)  # no duplicate, none missing
    assert sorted(json.dumps({k: v for k, v in r.items() if not k.endswith("_s")}, sort_keys=True) for r in rows) == want
    assert len([r for r in kept if r["type"] == "result"]) < len(want)  # the fault did stop the first run early
