"""generate_answer, KV byte counting, speed rows and the demo pipeline on a tiny random Llama (fast)."""

from __future__ import annotations

import json

import pytest

from kvpress_lab import Recipe
from kvpress_lab.benchmarks.demo import run_demo
from kvpress_lab.benchmarks.generation import generate_answer
from kvpress_lab.benchmarks.speed import measure_speed
from kvpress_lab.recipe_labels import CacheSize

CONTEXT = "the quick brown fox jumps over the lazy dog " * 3
QUESTION = " what jumps?"


@pytest.mark.parametrize("mode", ["query-aware", "query-agnostic"])
def test_compressed_cache_is_smaller_and_a_large_budget_is_the_identity(tiny_llama, char_tokenizer, mode):
    full = generate_answer(tiny_llama, char_tokenizer, None, CONTEXT, QUESTION, mode=mode, max_new_tokens=5)
    small = generate_answer(tiny_llama, char_tokenizer, Recipe.preset("snapkv", budget=16), CONTEXT, QUESTION,
                            mode=mode, max_new_tokens=5)
    huge = generate_answer(tiny_llama, char_tokenizer, Recipe.preset("snapkv", budget=4096), CONTEXT, QUESTION,
                           mode=mode, max_new_tokens=5)
    prompt_tokens = len(CONTEXT) + len(QUESTION)
    assert full.prompt_tokens == small.prompt_tokens == prompt_tokens
    context_tokens = prompt_tokens if mode == "query-aware" else len(CONTEXT)
    config = tiny_llama.config  # the full cache: 2 (K, V) x Hkv x T x D float32 entries per layer
    full_bytes = config.num_hidden_layers * 2 * config.num_key_value_heads * context_tokens * config.head_dim * 4
    assert full.kv_bytes == full_bytes == full.cache.total_bytes == full.cache.uncompressed_bytes
    assert full.cache.ratio == 1.0 and small.cache.uncompressed_bytes == full_bytes
    assert small.kv_bytes == small.cache.total_bytes and small.cache.ratio < 0.25
    assert small.kv_bytes < full.kv_bytes / 4
    assert huge.text == full.text and full.new_tokens == 5
    assert full.prefill_s > 0 and full.decode_step_s > 0
    assert (full.question_s > 0) == (mode == "query-agnostic")


def test_bad_mode_is_rejected(tiny_llama, char_tokenizer):
    with pytest.raises(ValueError, match="mode must be one of"):
        generate_answer(tiny_llama, char_tokenizer, None, "a", "b", mode="agnostic")


def test_speed_rows_compare_with_the_full_cache_on_the_same_prompt(tiny_llama, char_tokenizer):
    entries = [("snapkv", CacheSize(budget=32), Recipe.preset("snapkv", budget=32))]
    rows = measure_speed(tiny_llama, char_tokenizer, entries, lengths=(200,), decode_steps=3, progress=False)
    full, snap = rows
    assert (full["recipe"], snap["recipe"]) == ("full", "snapkv")
    assert snap["kv_bytes_before"] == full["kv_bytes_after"] > snap["kv_bytes_after"]
    assert snap["overhead_s"] == pytest.approx(snap["prefill_s"] - full["prefill_s"])
    assert full["overhead_s"] == 0 and snap["decode_steps"] == 3 and snap["peak_rss_mb"] > 0
    assert snap["recipe_config"]["budget"] == 32 and full["cuda_peak_mb"] is None


def test_demo_pipeline_writes_table_png_and_json(tmp_path, tiny_llama, char_tokenizer):
    result = run_demo("tiny-llama", tmp_path, lengths=[128], depths=[0.5], budgets=[16], recipes=["streamingllm"],
                      model=tiny_llama, tokenizer=char_tokenizer, progress=False, echo=False)
    assert [(s["recipe"], s["budget"]) for s in result.summary] == [("full", None), ("streamingllm", 16)]
    assert "accuracy" in result.table and "streamingllm" in result.table
    payload = json.loads(result.json_path.read_text())
    assert payload["meta"]["model"] == "tiny-llama" and len(payload["rows"]) == 2
    assert result.heatmap_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
