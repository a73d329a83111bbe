"""Chunked prefill with per-head (ragged) layers: every head re-scored and cut after each chunk."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab import Recipe
from kvpress_lab.engine.families import ModelAdapter

GENERATE = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
HEADS = 2  # Hkv of the tiny models


def _compressible(model):
    return ModelAdapter.for_model(model).compressible


def _counts(layer) -> torch.Tensor:
    """``(B, Hkv)`` entries held per head (a DynamicLayer holds every token in every head)."""
    if hasattr(layer, "kept_counts"):
        return layer.kept_counts()
    return torch.full(layer.keys.shape[:2], layer.keys.shape[2])


def _held_around_each_chunk(model, recipe, ids, chunk):
    """Per layer: the ``(B, Hkv)`` counts before and after the session's eviction, for every chunk of a chunked prefill."""
    before: dict[int, list[torch.Tensor]] = {}
    after: dict[int, list[torch.Tensor]] = {}

    def probe(store):
        def hook(module, args, kwargs, output):
            cache = kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")
            store.setdefault(module.layer_idx, []).append(_counts(cache.layers[module.layer_idx]))
        return hook

    with recipe.apply(model):
        layers = [model.get_decoder().layers[i].self_attn for i in _compressible(model)]
        # registered inside the block: `prepend` runs before the session's hook, the plain one after it
        handles = [m.register_forward_hook(probe(before), with_kwargs=True, prepend=True) for m in layers]
        handles += [m.register_forward_hook(probe(after), with_kwargs=True) for m in layers]
        try:  # one new token: only the prefill's chunks run
            out = model.generate(ids, prefill_chunk_size=chunk, **{**GENERATE, "max_new_tokens": 1})
        finally:
            for handle in handles:
                handle.remove()
    return out.cache, before, after


@pytest.mark.parametrize(("preset", "chunk"), [("adakv", 16), ("pyramid-adakv", 40)])
def test_each_head_holds_at_most_its_allocation_plus_a_chunk(family, preset, chunk):
    model = tiny_model(family)
    recipe = Recipe.preset(preset, budget=24)
    length = 120
    cache, before, after = _held_around_each_chunk(model, recipe, random_prompt(1, length), chunk)
    budgets = recipe.strategies.allocator.allocate(recipe.budget_spec.request(len(_compressible(model)), HEADS, length))
    for budget, idx in zip(budgets, _compressible(model)):
        held, kept = before[idx], after[idx]
        assert len(held) == len(kept) == -(-length // chunk)  # one forward per chunk
        for step in range(1, len(held)):
            assert bool((held[step] <= kept[step - 1] + chunk).all())  # a head gains one chunk at most
        for step, counts in enumerate(kept):
            assert int(counts.sum()) <= budget * HEADS  # the row's total never exceeds the layer's budget
        layer = cache.layers[idx]
        assert type(layer).__name__ == "RaggedLayer" and layer.get_seq_length() == length
        assert int(layer.kept_counts().sum()) == budget * HEADS  # the last chunk leaves exactly the final-length budget
    assert any(len(set(cache.layers[i].kept_counts()[0].tolist())) > 1 for i in _compressible(model))  # really per head


def test_ragged_chunked_equals_dense_chunked_with_equal_head_budgets(family):
    """Uniform head budgets on a ragged layer: each head scored as its own row must pick what the dense path picks."""
    model = tiny_model(family)
    ids = random_prompt(1, 150)
    dense = Recipe.preset("snapkv", budget=20)
    ragged = Recipe.preset("snapkv", budget=20, executor="ragged")
    with dense.apply(model):
        want = model.generate(ids, prefill_chunk_size=32, **GENERATE)
    with ragged.apply(model):
        got = model.generate(ids, prefill_chunk_size=32, **GENERATE)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for idx in _compressible(model):
        g, w = got.cache.layers[idx], want.cache.layers[idx]
        assert type(g).__name__ == "RaggedLayer"
        for head in range(HEADS):
            torch.testing.assert_close(g.head_entries(0, head)[0], w.head_entries(0, head)[0])  # the same kept keys


def _prefill_in_chunks(model, recipe, ids, bounds):
    """``ids`` ``(1, T)`` prefilled chunk by chunk at the token ``bounds`` given (not all one size)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad(), recipe.apply(model) as session:
        session.begin_chunked_prefill(ids)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            model(input_ids=ids[:, start:stop], cache=cache, use_cache=True)
    return cache


def test_left_padded_batch_equals_each_row_alone(family):
    """Row 1 has 24 padding tokens: its second chunk holds 8 padded and 8 real new tokens on a ragged layer."""
    model = tiny_model(family)
    long, short = random_prompt(1, 64)[0], random_prompt(1, 40, seed=1)[0]
    ids, mask = left_pad([long, short])
    recipe = Recipe.preset("adakv", budget=10, window=4)
    batch = recipe.prefill(model, ids, mask, chunk_size=16)
    alone = [recipe.prefill(model, long[None], chunk_size=16),
             _prefill_in_chunks(model, recipe, short[None], [0, 8, 24, 40])]  # row 1's own frame: 24 padding tokens
    for row in range(2):
        for idx in _compressible(model):
            got, want = batch.layers[idx], alone[row].layers[idx]
            assert got.kept_counts()[row].tolist() == want.kept_counts()[0].tolist()
            for head in range(HEADS):
                torch.testing.assert_close(got.head_entries(row, head)[0], want.head_entries(0, head)[0], rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(got.head_entries(row, head)[1], want.head_entries(0, head)[1], rtol=1e-4, atol=1e-4)
    with recipe.apply(model):  # generate end to end on the padded batch
        out = model.generate(ids, attention_mask=mask, prefill_chunk_size=16, **GENERATE)
    assert out.sequences.shape == (2, 68) and all(torch.isfinite(s).all() for s in out.scores)
