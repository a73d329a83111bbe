"""Chunked prefill with compression: each layer is cut back after every chunk (engine/chunking.py)."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab import Recipe

GENERATE = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)


def _held_per_chunk(model, recipe, run):
    """Run ``run()`` inside the recipe with a probe recording each full-attention layer's held entries after each forward."""
    seen: list[int] = []

    def probe(module, args, kwargs, output):
        cache = kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")
        layer = cache.layers[module.layer_idx]
        seen.append(int(layer.kept_counts().max()) if hasattr(layer, "kept_counts") else layer.keys.shape[2])

    with recipe.apply(model) as session:
        layers = [model.get_decoder().layers[i].self_attn for i in session.adapter.compressible]
        handles = [m.register_forward_hook(probe, with_kwargs=True) for m in layers]  # after the session's hook
        try:
            out = run()
        finally:
            for handle in handles:
                handle.remove()
    return out, seen


@pytest.mark.parametrize("chunk", [16, 64])
def test_no_layer_ever_holds_more_than_budget_plus_a_chunk(family, chunk):
    model = tiny_model(family)
    recipe = Recipe.preset("pyramidkv", budget=24)
    ids = random_prompt(1, 200)
    out, seen = _held_per_chunk(model, recipe, lambda: model.generate(ids, prefill_chunk_size=chunk, **GENERATE))
    budgets = recipe.strategies.allocator.allocate(recipe.budget_spec.request(len(_compressible(model)), 2, 200))
    assert max(seen) <= max(budgets) + chunk
    for budget, idx in zip(budgets, _compressible(model)):
        layer = out.cache.layers[idx]
        assert layer.get_seq_length() == 200 + 3  # true positions: tokens seen, the last generated one not fed back
        assert layer.kept_counts().tolist() == [[budget + 3] * 2]  # the last chunk leaves exactly the budget


def _compressible(model):
    from kvpress_lab.engine.families import ModelAdapter

    return ModelAdapter.for_model(model).compressible


def test_the_transformers_example_from_the_issue(family):
    """generate(prefill_chunk_size=64) on 200 tokens with budget 32 used to end with 169 entries per layer."""
    model = tiny_model(family)
    with Recipe(budget=32).apply(model):
        out = model.generate(random_prompt(1, 200), prefill_chunk_size=64, **{**GENERATE, "max_new_tokens": 1})
    for idx in _compressible(model):
        assert out.cache.layers[idx].kept_counts().tolist() == [[32, 32]]


@pytest.mark.parametrize(("preset", "budget"), [(None, 200), (None, 500), ("h2o", 200), ("adakv", 200)])
def test_budget_covering_the_prompt_is_unchunked_uncompressed_generation(family, preset, budget):
    """Also for h2o (scores accumulated across chunks) and adakv (per-head, ragged layers)."""
    model = tiny_model(family)
    ids = random_prompt(1, 200)
    want = model.generate(ids, **GENERATE)
    recipe = Recipe(budget=budget) if preset is None else Recipe.preset(preset, budget=budget)
    with recipe.apply(model):
        got = model.generate(ids, prefill_chunk_size=48, **GENERATE)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # chunked attention sums in another order


def test_left_padded_batch_keeps_each_rows_budget(family):
    model = tiny_model(family)
    ids, mask = left_pad([random_prompt(1, 120)[0], random_prompt(1, 70, seed=1)[0], random_prompt(1, 20, seed=2)[0]])
    with Recipe(budget=24, window=4).apply(model):
        out = model.generate(ids, attention_mask=mask, prefill_chunk_size=32, **GENERATE)
    for idx in _compressible(model):
        counts = out.cache.layers[idx].kept_counts()[:, 0].tolist()
        assert counts == [24 + 3, 24 + 3, 20 + 3]  # the 20-token row keeps everything
    assert out.sequences.shape == (3, 124)


def test_prefill_with_chunk_size_matches_generate_with_prefill_chunk_size():
    model = tiny_model("llama")
    ids = random_prompt(1, 150)
    recipe = Recipe.preset("snapkv", budget=32)
    cache = recipe.prefill(model, ids, chunk_size=40)
    with recipe.apply(model):
        out = model.generate(ids, prefill_chunk_size=40, **{**GENERATE, "max_new_tokens": 1})
    for idx in _compressible(model):
        a, b = cache.layers[idx], out.cache.layers[idx]
        assert a.get_seq_length() == b.get_seq_length() == 150
        torch.testing.assert_close(a.keys, b.keys)  # the same entries kept


def test_sinks_and_window_survive_every_chunk():
    model = tiny_model("qwen3")
    ids = random_prompt(1, 160)
    recipe = Recipe.preset("streamingllm", budget=20)  # 4 sinks + the most recent tokens
    with recipe.apply(model, record_indices=True) as session:
        model.generate(ids, prefill_chunk_size=32, **{**GENERATE, "max_new_tokens": 1})
    # the last chunk's selection indexes the held entries; its kept positions: the 4 sinks (kept from chunk 1)
    # and the 16 latest tokens, i.e. the 4 oldest held entries and the last 16 of the 20 + 32 held
    selection = session.selections[0]
    kept = selection.indices[0, 0][selection.valid[0, 0]].tolist()
    assert kept == [0, 1, 2, 3] + list(range(52 - 16, 52))


def test_keydiff_chunked_prefill_is_the_papers_block_prompt_processing():
    """After each block, the held keys and the block's are ranked against their own mean key; the budget stays."""
    model = tiny_model("llama")
    recipe = Recipe.preset("keydiff", budget=24)
    ids = random_prompt(1, 150)
    out, seen = _held_per_chunk(model, recipe, lambda: model.generate(ids, prefill_chunk_size=32, **GENERATE))
    assert max(seen) <= 24 + 32
    for idx in _compressible(model):
        assert out.cache.layers[idx].kept_counts().tolist() == [[24 + 3] * 2]
