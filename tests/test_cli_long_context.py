"""``--prefill-chunk`` and the decoding-compression flags of ``kvpress-lab run`` and ``bench``.

Misuse is one line on stderr before the model loads: exit status 2 for flags that conflict or do
nothing together (``--compress-every`` without ``--decode-budget``, any of them with only the full
cache, ``--prefill-chunk`` with a recipe that cannot compress a chunked prefill), 1 for values
the recipe refuses. The flags reach the recipe (``decode_budget``, ``compress_every``,
``compress_prefill``) and the prefill (chunk size), and results record them.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.char_tokenizer import CharTokenizer
from helpers.cli_errors import one_line_error
from helpers.refuse_loading import ModelLoaded, refuse_loading, tiny_loaded  # noqa: F401 (fixtures)
from helpers.tiny_models import tiny_model

import kvpress_lab.models
from kvpress_lab import Recipe
from kvpress_lab.benchmarks.generation import GenerationResult, generate_answer
from kvpress_lab.cli import main


@pytest.mark.parametrize("argv, status, message", [
    (["run", "hi", "--compress-every", "4"], 2, "--compress-every does nothing without --decode-budget"),
    (["run", "hi", "--no-compress-prefill"], 2, "--no-compress-prefill does nothing without --decode-budget"),
    (["run", "hi", "--full", "--prefill-chunk", "64"], 2, "--full conflicts with --prefill-chunk"),
    (["run", "hi", "--full", "--decode-budget", "64"], 2, "--full conflicts with --decode-budget"),
    (["run", "hi", "--preset", "lagkv", "--prefill-chunk", "64"], 2, "--prefill-chunk 64 does not work with recipe lagkv"),
    (["run", "hi", "--preset", "lagkv", "--decode-budget", "32", "--no-compress-prefill", "--prefill-chunk", "64"], 2,
     "--prefill-chunk 64 does not work with recipe lagkv"),
    (["run", "hi", "--prefill-chunk", "0"], 2, "--prefill-chunk must be an integer >= 1, got 0"),
    (["run", "hi", "--decode-budget", "x"], 2, "--decode-budget must be an integer >= 1, got x"),
    (["run", "hi", "--decode-budget", "64", "--compress-every", "0"], 2, "--compress-every must be an integer >= 1"),
    (["run", "hi", "--preset", "adakv", "--decode-budget", "64"], 2, "head_allocation='adaptive'"),
    (["bench", "needle", "--recipes", "full", "--decode-budget", "64"], 2, "--decode-budget does nothing without a compression recipe"),
    (["bench", "needle", "--recipes", "full,snapkv,lagkv", "--prefill-chunk", "64"], 2, "does not work with recipe lagkv"),
    (["bench", "ruler", "--compress-every", "8"], 2, "--compress-every does nothing without --decode-budget"),
    (["bench", "longbench", "--data-dir", ".", "--no-compress-prefill"], 2, "--no-compress-prefill does nothing without"),
    (["bench", "speed", "--no-compress-prefill"], 2, "--no-compress-prefill does nothing without --decode-budget"),
    (["bench", "speed", "--recipes", "full", "--prefill-chunk", "64"], 2, "--prefill-chunk does nothing without a compression"),
])
def test_bad_long_context_flags_fail_before_loading(capsys, argv, status, message):
    err = one_line_error(capsys, argv, status)
    assert message in err, err


@pytest.fixture
def generated(monkeypatch, tiny_loaded):
    """``run`` with a stand-in generation: the (recipe, options) of every call."""
    seen = []

    def generate(model, tokenizer, recipe, prompt, question, **options):
        seen.append((recipe, options))
        return GenerationResult("12345", prompt_tokens=5, prefill_s=0.01, question_s=0.0, decode_step_s=0.01,
                                kv_bytes=100, new_tokens=1)

    monkeypatch.setattr("kvpress_lab.benchmarks.generation.generate_answer", generate)
    return seen


def test_run_passes_the_flags_to_the_recipe_and_the_prefill(generated):
    assert main(["run", "hi", "--preset", "snapkv", "--budget", "32", "--prefill-chunk", "64", "--decode-budget", "48",
                 "--compress-every", "8", "--no-compress-prefill", "--max-new-tokens", "1"]) == 0
    ((recipe, options),) = generated
    assert (recipe.decode_budget, recipe.compress_every, recipe.compress_prefill, recipe.budget) == (48, 8, False, 32)
    assert options["prefill_chunk"] == 64
    assert main(["run", "hi", "--max-new-tokens", "1"]) == 0  # without the flags: the recipe's defaults
    recipe, options = generated[1]
    assert (recipe.decode_budget, recipe.compress_prefill, options["prefill_chunk"]) == (None, True, None)


def test_bench_needle_records_the_chunk_and_the_decode_budget(tmp_path, tiny_loaded):
    out = tmp_path / "needle.jsonl"
    assert main(["bench", "needle", "--lengths", "160", "--depths", "0.5", "--recipes", "full,snapkv", "--budgets", "24",
                 "--prefill-chunk", "48", "--decode-budget", "24", "--compress-every", "4", "--max-new-tokens", "2",
                 "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["type"] == "meta" and records[0]["config"]["prefill_chunk"] == 48
    rows = {r["recipe"]: r for r in records[1:]}
    assert rows["full"]["prefill_chunk"] is None and rows["full"]["recipe_config"] is None
    assert rows["snapkv"]["prefill_chunk"] == 48
    assert (rows["snapkv"]["recipe_config"]["decode_budget"], rows["snapkv"]["recipe_config"]["compress_every"]) == (24, 4)


def test_bench_speed_runs_chunked(tmp_path, tiny_loaded):
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--lengths", "120", "--recipes", "full,snapkv", "--budgets", "16", "--prefill-chunk", "32",
                 "--decode-steps", "2", "--out", str(out), "--no-progress"]) == 0
    payload = json.loads(out.read_text())
    assert payload["meta"]["config"]["prefill_chunk"] == 32
    assert [row["recipe"] for row in payload["rows"]] == ["full", "snapkv"]


@pytest.mark.parametrize("mode", ["query-aware", "query-agnostic"])
def test_a_chunked_answer_reports_the_cache_after_the_last_chunk(mode):
    """Query-aware chunked prefill runs one forward per chunk: time and cache cover them all."""
    model, tokenizer = tiny_model("llama", layers=2), CharTokenizer()
    recipe = Recipe(budget=16, window=4)
    context, question = "abcdefghij" * 10, " what is it?"
    chunked = generate_answer(model, tokenizer, recipe, context, question, mode=mode, max_new_tokens=3, prefill_chunk=32)
    whole = generate_answer(model, tokenizer, recipe, context, question, mode=mode, max_new_tokens=3)
    prefilled = len(context) + (len(question) if mode == "query-aware" else 0)
    for result in (chunked, whole):
        assert [layer.logical_length for layer in result.cache.layers] == [prefilled] * 2
        assert all(layer.kept_max == 16 for layer in result.cache.layers)
        assert result.new_tokens == 3
    with torch.no_grad():  # the full cache ignores the chunk size: it is the unchunked reference
        ref = generate_answer(model, tokenizer, None, context, question, mode=mode, max_new_tokens=3, prefill_chunk=32)
    assert ref.cache.layers[0].kept_max == prefilled
