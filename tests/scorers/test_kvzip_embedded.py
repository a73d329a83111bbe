"""KVzip on the real embedded model (SmolLM2-135M-Instruct, CPU): its own chat-template prompt, half the cache kept."""

from __future__ import annotations

import pytest

from helpers.embedded import embedded  # noqa: F401 (fixture)
from kvpress_lab import Recipe, cache_report

pytestmark = pytest.mark.slow


def test_kvzip_preset_halves_the_cache_and_keeps_generating(embedded):
    model, tokenizer = embedded
    text = "The quick brown fox jumps over the lazy dog. The secret number is 4721. " * 12
    ids = tokenizer(text, return_tensors="pt").input_ids  # ~250 tokens: one reconstruction chunk
    n = ids.shape[1]
    recipe = Recipe.preset("kvzip", compression_ratio=0.5)
    with recipe.apply(model) as session:
        out = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=tokenizer.eos_token_id)
    assert out.sequences.shape == (1, n + 3)
    report = cache_report(out.cache)
    kept = sum(layer.kept_sum for layer in report.layers)
    layers, heads = len(report.layers), report.layers[0].num_kv_heads
    half = recipe.resolve_budget(n)
    # every layer keeps its global-ranking share; the total is the budget (+ the 2 decoded tokens per head)
    assert kept == layers * heads * (half + 2)
    assert len({layer.kept_sum for layer in report.layers}) > 1  # budgets differ across layers
    assert session.recipe.strategies.scorer.prompt() is None  # the prompt came from the model's tokenizer
