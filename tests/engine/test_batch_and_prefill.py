"""Left-padded batches compress each row as if alone; prefill() caches answer several questions."""

from __future__ import annotations

import copy

import pytest
import torch

from kvpress_lab import Recipe
from kvpress_lab.engine.model_hooks import disable_compressed_decoding
from helpers.reference import full_prefill, gathered_cache, greedy_with_positions
from helpers.tiny_models import left_pad, random_prompt, tiny_model

LENGTHS = (37, 12, 25)


def _run(model, recipe, ids, mask=None, steps=4):
    with recipe.apply(model, record_indices=True) as session:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=0)
    return out, session


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_each_padded_row_is_compressed_as_if_alone(family, attn, test_strategies):
    model = tiny_model(family, attn)
    # per-layer budgets differ (a staircase), so layers hold different numbers of entries
    recipe = Recipe(allocator="test_staircase", scorer="snapkv_window", budget=14, window=4)
    rows = [random_prompt(1, n, seed=n)[0] for n in LENGTHS]
    ids, mask = left_pad(rows)
    batch_out, batch_session = _run(model, recipe, ids, mask)
    assert len({s.indices.shape[-1] for s in batch_session.selections.values()}) > 1

    for b, row in enumerate(rows):
        alone_out, alone_session = _run(model, recipe, row[None])
        pad = ids.shape[1] - len(row)
        for idx, alone in alone_session.selections.items():
            batched = batch_session.selections[idx]
            kept = batched.indices[b][batched.valid[b]].reshape(alone.indices.shape[1], -1) - pad
            assert kept.tolist() == alone.indices[0].tolist(), f"row {b} layer {idx}"
        if idx_missing := set(batch_session.selections) - set(alone_session.selections):
            # layers the short row does not evict in: it keeps all its real tokens, padding never
            for idx in idx_missing:
                batched = batch_session.selections[idx]
                kept = batched.indices[b][batched.valid[b]].reshape(2, -1)
                assert kept.tolist() == [list(range(pad, ids.shape[1]))] * 2
        assert batch_out.sequences[b, ids.shape[1]:].tolist() == alone_out.sequences[0, len(row):].tolist()
        for got, want in zip(batch_out.scores, alone_out.scores):
            torch.testing.assert_close(got[b], want[0], rtol=1e-4, atol=1e-4)


def test_prefill_then_ask_matches_explicit_reference(family):
    model = tiny_model(family)
    recipe = Recipe(budget=16, window=4)
    context, question = random_prompt(1, 41, seed=5), random_prompt(1, 6, seed=6)
    try:
        cache = recipe.prefill(model, context)
        full = torch.cat([context, question], dim=1)
        out = model.generate(full, cache=copy.deepcopy(cache), max_new_tokens=4, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
        again = model.generate(full, cache=copy.deepcopy(cache), max_new_tokens=4, do_sample=False)
    finally:
        disable_compressed_decoding(model)
    assert torch.equal(out.sequences, again)

    with recipe.apply(model, record_indices=True) as session:
        with torch.no_grad():
            model(context, use_cache=True)
    reference = gathered_cache(full_prefill(model, context), session.selections)
    with torch.no_grad():
        logits = model(question, position_ids=torch.arange(41, 47)[None], cache=reference, use_cache=True).logits
    torch.testing.assert_close(out.scores[0], logits[:, -1], rtol=1e-4, atol=1e-4)
    first = out.sequences[0, 47]
    assert int(first) == int(logits[0, -1].argmax())
    tokens, step_logits = greedy_with_positions(model, reference, first, start_position=47, steps=3)
    assert out.sequences[0, 48:].tolist() == tokens


def test_prefill_batch_with_padding_and_uneven_layers(test_strategies):
    model = tiny_model("qwen2")
    recipe = Recipe(allocator="test_staircase", budget=14, window=4)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in LENGTHS])
    try:
        cache = recipe.prefill(model, ids, mask)
        question = random_prompt(3, 3, seed=9)
        full = torch.cat([ids, question], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(question)], dim=1)
        out = model.generate(full, attention_mask=full_mask, cache=cache, max_new_tokens=3, do_sample=False,
                             pad_token_id=0)
    finally:
        disable_compressed_decoding(model)
    assert out.shape == (3, full.shape[1] + 3)
    assert len({layer.physical_length for layer in cache.layers}) > 1


def test_prefill_rejects_bad_shapes():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="batch, prompt_length"):
        Recipe(budget=16).prefill(model, torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must match"):
        Recipe(budget=16).prefill(model, torch.ones(1, 5, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
