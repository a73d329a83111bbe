"""Sweep planning, sharding and resuming, with a fake runner (no model)."""

from __future__ import annotations

import json

import warnings

import pytest

from kvpress_lab.benchmarks.sweep import (
    FULL, Cell, aggregate, finished_keys, parse_shard, plan_cells, run_sweep, select_shard,
)

META = {"benchmark": "fake", "model": "tiny", "seed": 0}


class FakeRunner:
    """Scores a cell by its budget and records every call."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, cell: Cell) -> dict:
        if cell.key == self.fail_on:
            raise KeyboardInterrupt  # an interrupted run
        self.calls.append(cell.key)
        return {"score": 100.0 if cell.budget is None else float(cell.budget)}


def test_plan_runs_full_once_and_every_recipe_at_every_budget():
    cells = plan_cells([FULL, "snapkv", "pyramidkv"], [64, 128], ["s0", "s1", "s2"])
    assert len(cells) == 3 + 2 * 2 * 3
    assert sum(c.recipe == FULL for c in cells) == 3 and all(c.budget is None for c in cells if c.recipe == FULL)
    assert len({c.key for c in cells}) == len(cells)
    with pytest.raises(ValueError, match="at least one budget"):
        plan_cells(["snapkv"], [], ["s0"])


def test_shards_partition_the_sweep_by_index():
    cells = plan_cells([FULL, "snapkv"], [64, 128, 256], [f"s{i}" for i in range(5)])
    shards = [select_shard(cells, (i, 3)) for i in range(3)]
    assert sorted(c.key for s in shards for c in s) == sorted(c.key for c in cells)
    assert shards[1] == [c for n, c in enumerate(cells) if n % 3 == 1]


@pytest.mark.parametrize("text, expected", [(None, (0, 1)), ("0/1", (0, 1)), ("2/4", (2, 4))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1/0", "a/b", "3"])
def test_parse_shard_rejects_bad_values(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_resume_skips_finished_cells(tmp_path):
    out = tmp_path / "sweep.jsonl"
    cells = plan_cells([FULL, "snapkv"], [64, 128], ["a", "b"])
    first = FakeRunner(fail_on=cells[3].key)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cells, first, out, META, progress=False)
    assert first.calls == [c.key for c in cells[:3]] and finished_keys(out) == set(first.calls)
    second = FakeRunner()
    report = run_sweep(cells, second, out, META, progress=False)
    assert second.calls == [c.key for c in cells[3:]]
    assert report == {"total": len(cells), "skipped": 3, "ran": len(cells) - 3}
    again = FakeRunner()
    assert run_sweep(cells, again, out, META, progress=False)["ran"] == 0 and again.calls == []
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["type"] for line in lines].count("meta") == 3
    assert sorted(line["cell"] for line in lines if line["type"] == "result") == sorted(c.key for c in cells)


def test_shards_writing_one_file_cover_the_sweep(tmp_path):
    out = tmp_path / "sweep.jsonl"
    cells = plan_cells([FULL, "h2o"], [32], [str(i) for i in range(7)])
    runners = [FakeRunner() for _ in range(3)]
    for index, runner in enumerate(runners):
        run_sweep(cells, runner, out, META, shard=(index, 3), progress=False)
    assert sorted(k for r in runners for k in r.calls) == sorted(c.key for c in cells)
    assert runners[0].calls == [c.key for c in cells[0::3]]


def test_truncated_last_line_is_rerun(tmp_path, capsys):
    out = tmp_path / "sweep.jsonl"
    cells = plan_cells(["snapkv"], [64], ["a", "b"])
    run_sweep(cells, FakeRunner(), out, META, progress=False)
    text = out.read_text()
    out.write_text(text[: text.rindex('{"type": "result"') + 20])  # crash in the middle of the last write
    runner = FakeRunner()
    run_sweep(cells, runner, out, META, progress=False)
    assert runner.calls == [cells[1].key] and "will be rerun" in capsys.readouterr().out


def test_a_file_of_another_model_is_refused(tmp_path):
    out = tmp_path / "sweep.jsonl"
    cells = plan_cells(["snapkv"], [64], ["a"])
    run_sweep(cells, FakeRunner(), out, META, progress=False)
    with pytest.raises(ValueError, match="model='tiny'"):
        run_sweep(cells, FakeRunner(), out, {**META, "model": "other"}, progress=False)


def test_aggregate_means_per_recipe_and_budget():
    rows = [{"recipe": "a", "budget": 1, "score": 1.0}, {"recipe": "a", "budget": 1, "score": 3.0},
            {"recipe": "b", "budget": None, "score": 5.0}]
    assert aggregate(rows, "score") == [{"recipe": "a", "budget": 1, "score": 2.0, "n": 2},
                                        {"recipe": "b", "budget": None, "score": 5.0, "n": 1}]


def test_a_cut_last_line_is_not_glued_to_the_next_record_and_the_file_stays_readable(tmp_path, capsys):
    """A killed job leaves an unterminated line; resuming used to append the next meta record onto it."""
    from kvpress_lab.benchmarks.results import read_meta, read_rows

    out = tmp_path / "sweep.jsonl"
    cells = plan_cells(["snapkv"], [64], ["a", "b", "c"])
    run_sweep(cells[:2], FakeRunner(), out, META, progress=False)
    text = out.read_text()
    out.write_text(text[: text.rindex('{"type": "result"') + 20])  # killed in the middle of the last write
    run_sweep(cells, FakeRunner(), out, META, progress=False)
    lines = out.read_text().splitlines()
    assert sum(line.startswith('{"type": "meta"') for line in lines) == 2  # the second meta record is intact
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sweep reported the cut line already: reading it again says nothing
        rows = read_rows(out)
        assert sorted(row["cell"] for row in rows) == sorted(c.key for c in cells) and len(read_meta(out)) == 2
    assert capsys.readouterr().out.count("is not valid JSON") == 1  # one cut line, one warning
    copy = tmp_path / "copy.jsonl"
    copy.write_text(out.read_text())
    with pytest.warns(UserWarning, match=r"copy.jsonl:3 is not valid JSON .* runs again on resume"):
        read_rows(copy)  # a file this process has not read yet: reported
