"""The leaderboard's statistics, tables and figures (no model)."""

from __future__ import annotations

import csv
import json

import pytest

from kvpress_lab.benchmarks.leaderboard import (
    build_leaderboard, family_table, interval, plot_family, size_of, summary_rows,
)


def test_right_or_wrong_scores_get_wilsons_interval_and_others_students():
    assert interval([100.0] * 20) == pytest.approx((83.89, 100.0), abs=0.01)  # 20/20 is not "certainly 100"
    assert interval([0.0] * 20) == pytest.approx((0.0, 16.11), abs=0.01)
    low, high = interval([100.0] * 10 + [0.0] * 10)
    assert (round(low, 1), round(high, 1)) == (29.9, 70.1)
    low, high = interval([20.0, 40.0, 40.0, 60.0])  # partial credit: t interval, df 3
    assert (low, high) == pytest.approx((40 - 3.182 * (16.3299 / 2), 40 + 3.182 * (16.3299 / 2)), abs=0.01)
    assert interval([50.0]) == (0.0, 100.0)
    with pytest.raises(ValueError):
        interval([])


def _row(recipe, score, budget=None, ratio=None, task="niah_single_1", length=1024, mode="query-aware"):
    return {"family": "lm_eval", "task": task, "length": length, "mode": mode, "recipe": recipe, "budget": budget,
            "compression_ratio": ratio, "score": score}


def test_summary_and_family_table_group_by_size_with_counts():
    rows = [_row("full", 100.0)] * 4 + [_row("snapkv", 100.0, ratio=0.5)] * 3 + [_row("snapkv", 0.0, ratio=0.5)] \
        + [_row("snapkv", 0.0, budget=128)] * 4 + [_row("kvzip-threshold", 100.0)] * 4
    assert [size_of(r) for r in (rows[0], rows[4], rows[8], rows[-1])] == ["full", "ratio 0.5", "budget 128", "threshold"]
    summary = summary_rows(rows)
    assert [(r["recipe"], r["size"], r["n"], r["mean"]) for r in summary] == [
        ("full", "full", 4, 100.0), ("snapkv", "ratio 0.5", 4, 75.0), ("snapkv", "budget 128", 4, 0.0),
        ("kvzip-threshold", "threshold", 4, 100.0)]
    header, lines = family_table(summary)
    assert header == ["method", "full (n=4)", "ratio 0.5 (n=4)", "budget 128 (n=4)", "threshold (n=4)"]
    assert lines[0][:2] == ["full", "100 [51, 100]"] and lines[1][2] == "75 [30, 95]" and lines[1][3] == "0 [0, 49]"


def test_build_leaderboard_writes_every_family_from_the_result_files(tmp_path):
    ruler = tmp_path / "ruler" / "results.jsonl"
    ruler.parent.mkdir(parents=True)
    rows = [_row("full", 100.0), _row("snapkv", 100.0, ratio=0.25), _row("snapkv", 0.0, ratio=0.5),
            _row("h2o", 0.0, ratio=0.25), _row("h2o", 0.0, ratio=0.5), _row("full", 20.0, task="ruler_vt")]
    ruler.write_text("\n".join(json.dumps({"type": "result", **r}) for r in rows) + "\n")
    written = {p.name for p in build_leaderboard(tmp_path)}
    assert {"ruler-full-cache.csv", "niah_single_1-1024-query-aware.csv", "niah_single_1-1024-query-aware.png",
            "ruler_vt-1024-query-aware.csv"} <= written
    assert "ruler_vt-1024-query-aware.png" not in written  # the full cache alone: a table, no figure
    with open(tmp_path / "leaderboard" / "ruler-full-cache.csv") as handle:
        assert [r["task"] for r in csv.DictReader(handle)] == ["niah_single_1", "ruler_vt"]


def test_plot_family_draws_one_line_per_method(tmp_path):
    summary = summary_rows([_row("full", 100.0), _row("snapkv", 100.0, ratio=0.25), _row("snapkv", 50.0, ratio=0.75),
                            _row("h2o", 0.0, ratio=0.25)])
    path = plot_family(summary, tmp_path / "f.png", "title")
    assert path.stat().st_size > 10_000
