"""Sweeps on a shared prefill: same rows as one prefill per cell, sample-major, resumable; ratio cells."""

from __future__ import annotations

import copy

import pytest

from helpers.char_tokenizer import CharTokenizer
from helpers.tiny_models import tiny_model
from kvpress_lab import Recipe
from kvpress_lab.benchmarks import bench
from kvpress_lab.benchmarks.generation import generate_answer
from kvpress_lab.benchmarks.results import read_rows
from kvpress_lab.benchmarks.shared_generation import can_share, generate_answers
from kvpress_lab.cli import main

TIMING = {"prefill_s", "decode_step_s", "shared_prefill"}
RECIPES = "full,snapkv,pyramidkv,h2o"


def _untimed(rows):
    return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in rows), key=lambda r: r["cell"])


@pytest.fixture
def tiny(monkeypatch, tiny_llama, char_tokenizer):
    monkeypatch.setattr(bench, "load", lambda args: (tiny_llama, char_tokenizer))


@pytest.mark.parametrize("mode", ["query-aware", "query-agnostic"])
def test_shared_and_unshared_needle_sweeps_write_the_same_rows(tiny, tmp_path, mode):
    argv = ["bench", "needle", "--lengths", "128", "--depths", "0,0.5", "--recipes", RECIPES, "--budgets", "24",
            "--no-progress", "--max-new-tokens", "3", "--mode", mode]
    assert main([*argv, "--out", str(tmp_path / "shared.jsonl")]) == 0
    assert main([*argv, "--out", str(tmp_path / "alone.jsonl"), "--no-share-prefill"]) == 0
    shared, alone = read_rows(tmp_path / "shared.jsonl"), read_rows(tmp_path / "alone.jsonl")
    assert len(shared) == 2 * (1 + 3)
    assert _untimed(shared) == _untimed(alone)
    assert all(r["shared_prefill"] is None for r in alone)
    compressed = [r for r in shared if r["recipe"] != "full"]
    assert all(r["shared_prefill"]["recipes"] == 4 for r in shared)  # one pass per sample, the full cache's included
    assert all(r["shared_prefill"]["compress_s"] == 0.0 for r in shared if r["recipe"] == "full")
    assert [r["sample"] for r in shared] == sorted(r["sample"] for r in shared)  # sample-major
    for row in compressed:
        timing = row["shared_prefill"]
        assert timing["compress_s"] >= 0 and timing["pass_s"] >= timing["forward_s"] > 0
        assert row["prefill_s"] == pytest.approx(timing["forward_s"] + timing["compress_s"])


def test_share_prefill_bounds_the_group_and_shards_resume(tiny, tmp_path, capsys):
    out = tmp_path / "needle.jsonl"
    argv = ["bench", "needle", "--lengths", "160", "--depths", "0,1", "--recipes", RECIPES, "--budgets", "24",
            "--no-progress", "--max-new-tokens", "3", "--out", str(out), "--share-prefill", "2"]
    assert main([*argv, "--shard", "0/2"]) == 0
    first = read_rows(out)
    assert len(first) == 4  # cells 0, 2, 4, 6 of 8
    assert main(argv) == 0
    rows = read_rows(out)
    assert len(rows) == 8 and len({r["cell"] for r in rows}) == 8
    assert "ran 4 cells, skipped 4" in capsys.readouterr().out
    assert {r["shared_prefill"]["recipes"] for r in rows if r["shared_prefill"]} <= {1, 2}
    assert any(r["shared_prefill"] and r["shared_prefill"]["recipes"] == 2 for r in rows)


def test_the_first_cell_runs_after_a_warm_up(tiny, tmp_path, capsys, monkeypatch):
    calls = []
    original = bench.SampleGroups.warm_up
    monkeypatch.setattr(bench.SampleGroups, "warm_up", lambda self, todo: calls.append(len(todo)) or original(self, todo))
    argv = ["bench", "needle", "--lengths", "128", "--depths", "0", "--recipes", "full,snapkv", "--budgets", "24",
            "--no-progress", "--max-new-tokens", "2", "--out", str(tmp_path / "n.jsonl")]
    assert main(argv) == 0
    assert "warm-up (full cache" in capsys.readouterr().err
    assert main(argv) == 0  # nothing left to run: no warm-up either
    assert calls == [2, 0]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("mode", ["query-aware", "query-agnostic"])
def test_generate_answers_equals_one_generate_answer_per_recipe(family, mode):
    model, tokenizer = tiny_model(family, layers=4), CharTokenizer()
    context, question = "abcdefghij" * 12 + " 12345 " + "klmnopq" * 6, " the code is"
    recipes = [None, Recipe.preset("snapkv", budget=24), Recipe.preset("pyramidkv", budget=40),
               Recipe.preset("h2o", budget=24), Recipe.preset("snapkv", compression_ratio=0.5),
               Recipe.preset("snapkv", budget=24, decode_budget=32)]
    alone = [generate_answer(model, tokenizer, r, context, question, mode=mode, max_new_tokens=5) for r in recipes]
    shared = list(generate_answers(model, tokenizer, recipes, context, question, mode=mode, max_new_tokens=5, share=3))
    assert [i for i, _ in shared] == list(range(len(recipes)))
    for (_, got), want in zip(shared, alone):
        assert (got.text, got.new_tokens, got.kv_bytes, got.prompt_tokens) == (want.text, want.new_tokens, want.kv_bytes,
                                                                                 want.prompt_tokens)
    groups = [None if r.shared is None else r.shared["recipes"] for _, r in shared]
    if mode == "query-aware":  # decoding-time compression needs the session while decoding: that recipe runs alone
        assert groups == [3, 3, 3, 2, 2, None]
    else:
        assert groups == [3, 3, 3, 3, 3, 3]


def test_what_cannot_share_runs_alone(tiny_llama):
    assert can_share(None) and can_share(None, "query-agnostic")  # the full cache is the shared pass's own
    assert not can_share(Recipe.preset("snapkv", budget=24, decode_budget=32), "query-aware")
    assert can_share(Recipe.preset("snapkv", budget=24, decode_budget=32), "query-agnostic")
    assert can_share(Recipe.preset("snapkv", budget=24), "query-aware", tiny_llama)
    penalised = copy.deepcopy(tiny_llama.generation_config)
    penalised.repetition_penalty = 1.3
    original, tiny_llama.generation_config = tiny_llama.generation_config, penalised
    try:  # the first token is no longer a plain argmax: each recipe prefills alone
        assert not can_share(Recipe.preset("snapkv", budget=24), "query-aware", tiny_llama)
        assert can_share(Recipe.preset("snapkv", budget=24), "query-agnostic", tiny_llama)
    finally:
        tiny_llama.generation_config = original
    assert not can_share(Recipe.preset("snapkv", budget=24), "query-aware", tiny_llama, min_new_tokens=4)


def test_needle_ratio_cells_sit_beside_budget_cells(tiny, tmp_path, capsys):
    out = tmp_path / "needle.jsonl"
    assert main(["bench", "needle", "--lengths", "160", "--depths", "0", "--recipes", "full,snapkv", "--budgets", "24",
                 "--ratios", "0.5,0.75", "--no-progress", "--max-new-tokens", "2", "--out", str(out)]) == 0
    rows = {r["cell"]: r for r in read_rows(out)}
    assert sorted(rows) == ["full|-|L=160|d=0", "snapkv|24|L=160|d=0", "snapkv|r0.5|L=160|d=0", "snapkv|r0.75|L=160|d=0"]
    half, quarter = rows["snapkv|r0.5|L=160|d=0"], rows["snapkv|r0.75|L=160|d=0"]
    assert (half["budget"], half["compression_ratio"]) == (None, 0.5)
    assert half["recipe_config"]["compression_ratio"] == 0.5 and half["recipe_config"]["budget"] is None
    assert rows["snapkv|24|L=160|d=0"].get("compression_ratio") is None
    full = rows["full|-|L=160|d=0"]["kv_bytes"]
    assert half["kv_bytes"] / full == pytest.approx(0.5, abs=0.02)
    assert quarter["kv_bytes"] / full == pytest.approx(0.25, abs=0.02)
    table = capsys.readouterr().out
    assert "ratio 0.5 " in table and "ratio 0.75" in table
    assert (tmp_path / "needle.png").is_file()


def test_ratios_alone_replace_the_default_budgets(tiny, tmp_path):
    out = tmp_path / "needle.jsonl"
    assert main(["bench", "needle", "--lengths", "128", "--depths", "0", "--recipes", "snapkv", "--ratios", "0.5",
                 "--no-progress", "--max-new-tokens", "2", "--out", str(out)]) == 0
    assert [r["cell"] for r in read_rows(out)] == ["snapkv|r0.5|L=128|d=0"]


@pytest.mark.parametrize("bad", ["1", "-0.1", "half"])
def test_a_ratio_outside_zero_one_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "needle", "--ratios", bad])
    assert exit_info.value.code == 2 and "ratios in [0, 1)" in capsys.readouterr().err


def test_ratios_with_only_the_full_cache_are_refused(capsys):
    assert main(["bench", "needle", "--recipes", "full", "--ratios", "0.5"]) == 2
    assert "--ratios" in capsys.readouterr().err
