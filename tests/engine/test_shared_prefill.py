"""compress_many: one prefill, every recipe's cache bit-identical to compressing it alone."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab import Recipe, compress_many
from kvpress_lab.engine.padding import padded_positions

RECIPES = [
    Recipe.preset("snapkv", budget=16, window=4),
    Recipe.preset("pyramidkv", budget=16, window=4),
    Recipe.preset("h2o", budget=20, window=4),
    Recipe.preset("streamingllm", budget=12, window=4),
    Recipe.preset("adaptive", budget=16, window=4),  # global scope: evicts after the last layer
    Recipe.preset("adakv", budget=16, window=4),  # per-head: ragged layers
    Recipe(budget=500),  # keeps everything
]


def _state(layer):
    """Everything a cache layer holds, as a tuple of tensors and numbers."""
    if hasattr(layer, "flat_keys"):
        return (layer.flat_keys, layer.flat_values, layer.lengths, layer.get_seq_length())
    if hasattr(layer, "dense_entries"):
        keys, values, valid = layer.dense_entries()
        return (keys, values, valid, layer.get_seq_length())
    return (layer.keys, layer.values, layer.get_seq_length())


def _assert_same(a, b):
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers):
        assert type(la) is type(lb)
        for x, y in zip(_state(la), _state(lb)):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def _prompt(batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, T)`` ids and mask: one 40-token prompt without a mask, or 40 and 27 tokens left-padded."""
    if batch == 1:
        return random_prompt(1, 40), None
    return left_pad([random_prompt(1, 40)[0], random_prompt(1, 27, seed=1)[0]])


@pytest.mark.parametrize("batch", [1, 2])
def test_each_cache_is_bit_identical_to_compressing_alone(family, batch):
    model = tiny_model(family)
    ids, mask = _prompt(batch)
    recipes = RECIPES if batch == 1 else [r for r in RECIPES if r.head_allocation == "uniform"]  # ragged: batch 1 too
    shared = compress_many(model, ids, recipes, mask)
    for recipe, cache in zip(recipes, shared):
        _assert_same(cache, recipe.prefill(model, ids, mask))


def test_caches_are_independent_and_decode(family):
    model = tiny_model(family)
    ids = random_prompt(1, 40)
    first, second = compress_many(model, ids, [RECIPES[0], RECIPES[0]])
    question = torch.cat([ids, random_prompt(1, 3, seed=2)], dim=1)
    a = model.generate(question, cache=first, max_new_tokens=4, do_sample=False, pad_token_id=0)
    b = model.generate(question, cache=second, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)  # decoding on one did not touch the other (sliding layers included)


@pytest.mark.parametrize("batch", [1, 2])
def test_none_is_the_pass_s_own_full_cache(family, batch):
    model = tiny_model(family)
    ids, mask = _prompt(batch)
    positions = None if mask is None else padded_positions(mask)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask, position_ids=positions, use_cache=True).past_key_values
    first, compressed, second = compress_many(model, ids, [None, RECIPES[0], None], mask)
    _assert_same(first, plain)
    _assert_same(second, plain)
    _assert_same(compressed, RECIPES[0].prefill(model, ids, mask))
    assert all(a is not b for a, b in zip(first.layers, second.layers))
    if mask is None:  # decoding one full cache leaves the other and the compressed one as they were
        model.generate(torch.cat([ids, random_prompt(1, 3, seed=2)], dim=1), cache=first, max_new_tokens=3,
                       do_sample=False, pad_token_id=0)
        _assert_same(second, plain)
        _assert_same(compressed, RECIPES[0].prefill(model, ids, mask))


def test_the_pass_computes_the_last_position_s_logits_only():
    model = tiny_model("llama")
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[1]))
    compress_many(model, random_prompt(1, 30), [None, RECIPES[0]])
    RECIPES[0].prefill(model, random_prompt(1, 30))
    RECIPES[0].prefill(model, random_prompt(1, 30), chunk_size=8)
    assert rows == [1] * 6


def test_max_recipes_splits_the_work_into_passes(monkeypatch):
    model = tiny_model("llama")
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    caches = compress_many(model, random_prompt(1, 30), RECIPES[:3], max_recipes=2)
    assert len(caches) == 3 and len(calls) == 2


def test_bad_arguments():
    model = tiny_model("llama")
    with pytest.raises(TypeError, match="recipes must be one or more kvpress_lab.Recipe"):
        compress_many(model, random_prompt(1, 30), ["snapkv"])
    with pytest.raises(ValueError, match="max_recipes must be an integer >= 1 or None, got 0"):
        compress_many(model, random_prompt(1, 30), RECIPES[:1], max_recipes=0)
    with pytest.raises(ValueError, match="both >= 1"):
        compress_many(model, torch.zeros(1, 0, dtype=torch.long), RECIPES[:1])
