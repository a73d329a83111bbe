"""After eviction, decoding continues at the true positions T + i (not at the compressed length)."""

from __future__ import annotations

import pytest
import torch

from kvpress_lab import Recipe
from helpers.reference import full_prefill, gathered_cache, greedy_with_positions
from helpers.tiny_models import random_prompt, tiny_model

T, BUDGET, STEPS = 37, 16, 5


def _compressed_run(model, ids):
    with Recipe(budget=BUDGET).apply(model, record_indices=True) as session:
        out = model.generate(ids, max_new_tokens=STEPS + 1, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    return out, session.selections


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decoding_matches_explicit_position_reference(family, attn):
    model = tiny_model(family, attn)
    ids = random_prompt(1, T, seed=3)
    out, selections = _compressed_run(model, ids)
    assert selections, "nothing was compressed"
    for selection in selections.values():
        assert selection.indices.shape[-1] == BUDGET

    reference = gathered_cache(full_prefill(model, ids), selections)
    first = out.sequences[0, T]
    tokens, logits = greedy_with_positions(model, reference, first, start_position=T, steps=STEPS)
    assert out.sequences[0, T + 1:].tolist() == tokens
    for got, want in zip(out.scores[1:], logits):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_reference_is_sensitive_to_positions():
    """The check above can fail: decoding at the compressed length instead of T gives other logits."""
    model = tiny_model("llama")
    ids = random_prompt(1, T, seed=3)
    out, selections = _compressed_run(model, ids)
    wrong = gathered_cache(full_prefill(model, ids), selections)
    _, logits = greedy_with_positions(model, wrong, out.sequences[0, T], start_position=BUDGET, steps=1)
    assert not torch.allclose(out.scores[1], logits[0], rtol=1e-4, atol=1e-4)


def test_first_generated_token_gets_position_T():
    model = tiny_model("llama")
    ids = random_prompt(1, T, seed=3)
    seen = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        _compressed_run(model, ids)
    finally:
        hook.remove()
    assert seen[0][0].tolist() == list(range(T))
    assert [int(p[0, -1]) for p in seen[1:]] == list(range(T, T + STEPS))
