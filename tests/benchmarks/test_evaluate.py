"""``kvpress-lab eval``: one configuration runs its tasks x recipes x sizes x modes, resumes, and refuses to mix results.

On the embedded model with short prompts (own RULER-style generator at 256 tokens, lm-eval's
``niah_single_1`` at 512 tokens, ``--limit``-sized), so the whole module takes seconds per run.
"""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from helpers.embedded import needs_distribution
from kvpress_lab.cli import main

pytestmark = [needs_distribution, pytest.mark.slow]


def _write(tmp_path, **changes):
    data = {"model": {"name": "smollm2-135m-instruct", "device": "cpu"}, "output": str(tmp_path / "out"),
            "progress": False, "modes": ["query-aware", "query-agnostic"], "sizes": {"budgets": [64]},
            "recipes": ["full", "snapkv", {"preset": "streamingllm", "label": "stream-w4", "window": 4}],
            "tasks": [{"kind": "ruler", "tasks": ["niah_single"], "lengths": [256], "samples": 1}], **changes}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _results(tmp_path):
    lines = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    return [r for r in lines if r["type"] == "meta"], [r for r in lines if r["type"] == "result"]


def test_a_config_runs_every_cell_once_writes_its_outputs_and_resumes(tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["eval", str(path)]) == 0
    metas, rows = _results(tmp_path)
    assert len(rows) == 3 * 2  # (full, snapkv@64, stream-w4@64) x 2 modes
    assert {r["mode"] for r in rows} == {"query-aware", "query-agnostic"}
    assert {(r["recipe"], r["budget"]) for r in rows} == {("full", None), ("snapkv", 64), ("stream-w4", 64)}
    stream = next(r for r in rows if r["recipe"] == "stream-w4")
    assert stream["recipe_config"]["window"] == 4 and stream["family"] == "ruler" and stream["score"] in (0.0, 100.0)
    assert metas[0]["benchmark"] == "eval" and metas[0]["config"]["recipes"][2]["window"] == 4
    resolved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert resolved["share_prefill"] == 8 and resolved["tasks"][0]["samples"] == 1
    with open(tmp_path / "out" / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 6 and {s["n"] for s in summary} == {"1"}

    assert main(["eval", str(path)]) == 0  # resumed: nothing left to run
    assert "ran 0 cells, skipped 6" in capsys.readouterr().out
    assert len(_results(tmp_path)[1]) == 6


def test_a_changed_recipe_under_the_same_label_is_refused(tmp_path, capsys):
    assert main(["eval", str(_write(tmp_path, modes=["query-aware"]))]) == 0
    changed = _write(tmp_path, modes=["query-aware"],
                     recipes=["full", "snapkv", {"preset": "streamingllm", "label": "stream-w4", "window": 8}])
    assert main(["eval", str(changed)]) == 2
    err = capsys.readouterr().err
    assert "stream-w4" in err and "window: 4 in the file, 8 now" in err


def test_shards_split_the_cells_and_share_one_file(tmp_path, capsys):
    path = _write(tmp_path, modes=["query-aware"])
    assert main(["eval", str(path), "--shard", "0/2"]) == 0
    assert len(_results(tmp_path)[1]) == 2
    assert main(["eval", str(path), "--shard", "1/2"]) == 0
    assert len({r["cell"] for r in _results(tmp_path)[1]}) == 3


def test_a_prompt_of_your_own_runs_in_both_modes(tmp_path):
    (tmp_path / "doc.txt").write_text("The lighthouse on Mira Island was built in 1887 by Clara Voss. " * 3)
    path = _write(tmp_path, recipes=["full", {"preset": "snapkv", "budgets": [16]}],
                  tasks=[{"kind": "prompt", "prompt_file": str(tmp_path / "doc.txt"), "question": " Who built it?",
                          "label": "lighthouse", "max_new_tokens": 4}])
    assert main(["eval", str(path)]) == 0
    rows = _results(tmp_path)[1]
    assert {(r["task"], r["mode"], r["recipe"]) for r in rows} == {
        ("lighthouse", mode, recipe) for mode in ("query-aware", "query-agnostic") for recipe in ("full", "snapkv")}
    assert all(r["score"] is None and r["new_tokens"] <= 4 for r in rows)
    aware, agnostic = (next(r for r in rows if r["recipe"] == "full" and r["mode"] == m)
                       for m in ("query-aware", "query-agnostic"))
    assert aware["prompt_tokens"] == agnostic["prompt_tokens"] and agnostic["kv_bytes"] < aware["kv_bytes"]


def test_dry_run_loads_nothing_and_shows_the_resolved_config(tmp_path, capsys):
    assert main(["eval", str(_write(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "label: stream-w4" in out and "nothing ran" in out
    assert not (tmp_path / "out").exists()


def test_lm_eval_ruler_smoke_through_the_config(tmp_path):
    """CI's RULER smoke test: one offline lm-eval RULER task, 512 tokens, one document, both modes."""
    pytest.importorskip("wonderwords", reason='pip install "kvpress-lab[eval]"')
    path = _write(tmp_path, recipes=["full", "snapkv"],
                  tasks=[{"kind": "lm_eval", "tasks": ["niah_single_1"], "max_seq_lengths": [512], "limit": 1}])
    assert main(["eval", str(path)]) == 0
    rows = {(r["recipe"], r["mode"]): r for r in _results(tmp_path)[1]}
    assert len(rows) == 4
    full = rows[("full", "query-aware")]
    assert full["task"] == "niah_single_1" and full["length"] == 512 and full["metric"] == "512"
    assert full["score"] == 100.0 and full["answers"][0] in full["output"]  # the full cache finds the 7-digit needle
    agnostic = rows[("full", "query-agnostic")]
    assert agnostic["output"] == full["output"] and agnostic["prompt_tokens"] == full["prompt_tokens"]  # same tokens
    assert agnostic["kv_bytes"] < full["kv_bytes"]  # what was prefilled (and would be compressed): the context alone
    assert rows[("snapkv", "query-aware")]["kv_bytes"] == rows[("snapkv", "query-agnostic")]["kv_bytes"] < agnostic["kv_bytes"]
    # query-agnostic: the window scores the end of the haystack, not the question; snapkv loses the needle at budget 64
    assert rows[("snapkv", "query-agnostic")]["score"] == 0.0


@pytest.mark.parametrize(("recorded_sinks", "resumes"), [(4, True), (8, False)])
def test_a_file_recorded_before_the_sinks_rename_resumes_when_the_recipe_is_the_same(tmp_path, recorded_sinks, resumes):

    from kvpress_lab import Recipe
    from kvpress_lab.benchmarks.evaluate import _check_resume
    from kvpress_lab.benchmarks.input_errors import BenchmarkInputError
    from kvpress_lab.recipe_labels import CacheSize

    recipe = Recipe.preset("lagkv", compression_ratio=0.5)
    old = recipe.to_dict()
    old["scorer_kwargs"] = {("n_sink" if k == "num_sinks" else k): v for k, v in old["scorer_kwargs"].items()}
    old["scorer_kwargs"]["n_sink"] = recorded_sinks
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"type": "result", "recipe": "lagkv", "budget": None, "compression_ratio": 0.5,
                                "sample": "s", "recipe_config": old}) + "\n")
    entries = {("lagkv", CacheSize(ratio=0.5)): recipe}
    if resumes:
        _check_resume(path, entries, {})
    else:
        with pytest.raises(BenchmarkInputError, match="'num_sinks': 8.* in the file"):
            _check_resume(path, entries, {})
