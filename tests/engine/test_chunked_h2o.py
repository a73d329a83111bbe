"""H2O in a chunked prefill: running scores accumulated across chunks, as the original method does."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_prompt, tiny_model
from kvpress_lab import Recipe
from kvpress_lab.engine.families import ModelAdapter

GENERATE = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)


def _compressible(model):
    return ModelAdapter.for_model(model).compressible


def test_running_score_is_the_attention_received_while_in_the_cache():
    """Brute force from the model's own (eager) attention weights of every chunk.

    The reference follows each head's held tokens by their original positions: a chunk's held
    entries are the kept ones followed by the chunk's; the attention weights the layer computed
    for the chunk's queries (summed over queries, averaged over the group) are added to the
    running score of every held token, then only the kept tokens and their scores stay. At the
    end the session's running scores of the kept entries must equal the reference, and every
    chunk must have kept the window plus the highest reference scores.
    """
    model = tiny_model("llama", attn_implementation="eager")
    length, chunk, budget, window = 40, 8, 6, 2  # every chunk evicts: 8 >= 6 + 1, then 6 + 8
    recipe = Recipe(scorer="h2o", budget=budget, window=window)
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    reference: dict[int, tuple[list, torch.Tensor]] = {}  # layer -> (held tokens per head, running scores (Hkv, K))
    checked = []

    with recipe.apply(model, record_indices=True) as session:
        def probe(module, args, kwargs, output):
            idx = module.layer_idx
            weights = output[1][0].double()  # (Hq, Q, held): eager attention over the entries held for this chunk
            heads, queries, held = weights.shape[0] // groups, weights.shape[1], weights.shape[2]
            received = weights.sum(dim=1).reshape(heads, groups, held).mean(dim=1)  # (Hkv, held)
            tokens, scores = reference.get(idx, ([[] for _ in range(heads)], torch.zeros(heads, 0, dtype=torch.float64)))
            start = held - queries
            assert start == scores.shape[1]
            first = checked.count(idx) * chunk  # the chunk's first token
            tokens = [t + list(range(first, first + queries)) for t in tokens]
            scores = torch.cat([scores, torch.zeros(heads, queries, dtype=torch.float64)], dim=1) + received
            selection = session.selections[idx]  # this chunk's (every chunk evicts)
            kept_tokens, kept_scores = [], []
            for h in range(heads):
                slots = selection.indices[0, h][selection.valid[0, h]].tolist()
                free = [s for s in range(held - window)]  # the last `window` held entries are forced
                best = sorted(free, key=lambda s: (-float(scores[h, s]), s))[: budget - window]
                assert sorted(best + list(range(held - window, held))) == slots  # top scores plus the window
                kept_tokens.append([tokens[h][s] for s in slots])
                kept_scores.append(scores[h, slots])
            reference[idx] = (kept_tokens, torch.stack(kept_scores))
            checked.append(idx)

        layers = [model.get_decoder().layers[i].self_attn for i in _compressible(model)]
        handles = [m.register_forward_hook(probe, with_kwargs=True) for m in layers]  # after the session's hook
        try:
            model.generate(random_prompt(1, length), prefill_chunk_size=chunk, **{**GENERATE, "max_new_tokens": 1})
        finally:
            for handle in handles:
                handle.remove()
        assert len(checked) == len(layers) * (length // chunk)
        for idx in _compressible(model):
            kept = session.accumulated_scores[idx][0].double()  # (Hkv, K)
            torch.testing.assert_close(kept, reference[idx][1], rtol=1e-5, atol=1e-6)
            assert all(max(t) == length - 1 for t in reference[idx][0])  # the window: the last tokens stay


def test_one_chunk_covering_the_prompt_is_one_shot_h2o(family):
    model = tiny_model(family)
    ids = random_prompt(1, 90)
    recipe = Recipe.preset("h2o", budget=20)
    one_shot = recipe.prefill(model, ids)
    chunked = recipe.prefill(model, ids, chunk_size=90)
    for idx in _compressible(model):
        torch.testing.assert_close(chunked.layers[idx].keys, one_shot.layers[idx].keys)


def test_chunked_h2o_holds_at_most_budget_plus_a_chunk(family):
    model = tiny_model(family)
    seen: list[int] = []

    def probe(module, args, kwargs, output):
        cache = kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")
        layer = cache.layers[module.layer_idx]
        seen.append(int(layer.kept_counts().max()) if hasattr(layer, "kept_counts") else layer.keys.shape[2])

    with Recipe.preset("h2o", budget=16).apply(model):
        handles = [model.get_decoder().layers[i].self_attn.register_forward_hook(probe, with_kwargs=True)
                   for i in _compressible(model)]
        try:
            out = model.generate(random_prompt(1, 120), prefill_chunk_size=24, **{**GENERATE, "max_new_tokens": 1})
        finally:
            for handle in handles:
                handle.remove()
    assert max(seen) <= 16  # after each chunk's eviction
    for idx in _compressible(model):
        assert out.cache.layers[idx].kept_counts().tolist() == [[16, 16]]
