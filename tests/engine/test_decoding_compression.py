"""Decoding-time compression: every compress_every generated tokens each layer is cut back to decode_budget."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab import Recipe
from kvpress_lab.engine.families import ModelAdapter

GENERATE = dict(do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)


def _generate_recording(model, recipe, ids, mask=None, **options):
    """Generate inside ``recipe``; record each full-attention layer's largest row after every forward."""
    held: list[list[int]] = []

    def probe(module, args, kwargs, output):
        layer = kwargs["cache"].layers[module.layer_idx]
        counts = layer.kept_counts().max() if hasattr(layer, "kept_counts") else layer.keys.shape[2]
        held[-1].append(int(counts))

    def new_forward(module, args, kwargs):
        held.append([])

    decoder = model.get_decoder()
    with recipe.apply(model) as session:
        handles = [decoder.register_forward_pre_hook(new_forward, with_kwargs=True)]
        handles += [decoder.layers[i].self_attn.register_forward_hook(probe, with_kwargs=True) for i in session.adapter.compressible]
        try:
            out = model.generate(ids, attention_mask=mask, **{**GENERATE, **options})
        finally:
            for handle in handles:
                handle.remove()
    return out, held


def test_the_cache_never_exceeds_budget_plus_compress_every(family):
    model = tiny_model(family)
    recipe = Recipe(budget=24, window=4, decode_budget=16, compress_every=8)
    out, held = _generate_recording(model, recipe, random_prompt(1, 40), max_new_tokens=50)
    decoding = [max(step) for step in held[1:]]
    assert max(decoding) <= 16 + 8 - 1  # cut as soon as a layer reaches 16 + 8
    assert min(decoding[5:]) >= 16  # and never below the budget
    for idx in ModelAdapter.for_model(model).compressible:
        assert out.cache.layers[idx].get_seq_length() == 40 + 49  # true positions: every token seen


def test_decoding_only_compression_leaves_the_prefill_whole():
    model = tiny_model("llama")
    recipe = Recipe(decode_budget=12, compress_every=4, window=4, compress_prefill=False)
    out, held = _generate_recording(model, recipe, random_prompt(1, 30), max_new_tokens=20)
    assert max(held[0]) == 30  # the prefill kept everything
    assert max(max(step) for step in held[1:]) <= 12 + 4 - 1


def test_a_budget_never_exceeded_is_the_identity(family):
    model = tiny_model(family)
    ids = random_prompt(1, 30)
    want = model.generate(ids, max_new_tokens=8, **GENERATE)
    with Recipe(decode_budget=64, compress_prefill=False).apply(model):
        got = model.generate(ids, max_new_tokens=8, **GENERATE)
    assert torch.equal(got.sequences, want.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, want.scores))


def test_left_padded_batch_and_sampling():
    model = tiny_model("qwen3")
    ids, mask = left_pad([random_prompt(1, 40)[0], random_prompt(1, 25, seed=1)[0]])
    torch.manual_seed(0)
    recipe = Recipe(budget=20, window=4, decode_budget=12, compress_every=4)
    out, held = _generate_recording(model, recipe, ids, mask, max_new_tokens=30, do_sample=True, top_k=5)
    assert out.sequences.shape == (2, 70)
    assert max(max(step) for step in held[1:]) <= 12 + 4 - 1
    for idx in ModelAdapter.for_model(model).compressible:
        counts = out.cache.layers[idx].kept_counts()[:, 0]
        assert bool((counts >= 12).all()) and bool((counts < 16).all())


def test_recipe_fields_validate_and_round_trip():
    recipe = Recipe(decode_budget=32, compress_every=8, compress_prefill=False)
    assert Recipe.from_json(recipe.to_json()) == recipe and recipe.decode_spec.budget == 32
    with pytest.raises(ValueError, match=r"Recipe\.decode_budget must be >= window=8 .* got decode_budget=4"):
        Recipe(decode_budget=4)
    with pytest.raises(ValueError, match="compress_prefill=False compresses nothing unless decode_budget is set"):
        Recipe(compress_prefill=False)
    with pytest.raises(ValueError, match=r"Recipe\.compress_every must be an integer >= 1, got 0"):
        Recipe(decode_budget=32, compress_every=0)
    with pytest.raises(ValueError, match="decode_budget does not combine with head_allocation='adaptive'"):
        Recipe(decode_budget=32, head_allocation="adaptive")
