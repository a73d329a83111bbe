"""Exact kept sets on hand-made scores, GQA shapes, state isolation, hook removal, bad input."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kvpress_lab import Recipe, UnsupportedModelError
from kvpress_lab.cache_layers.dense import CompressedLayer
from helpers.tiny_models import random_prompt, tiny_model

T = 20
HAND = [0.5, 9.0, 0.1, 3.0, 3.0, 0.0, 7.0, 0.2, 3.0, 1.0, 8.0, 0.3, 0.4, 2.0, 6.0, 0.6, 5.0, 4.0, 0.7, 0.8]


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hand_scores_keep_exactly_the_expected_set(family, test_strategies):
    model = tiny_model(family)
    recipe = Recipe(scorer="test_hand", scorer_kwargs={"scores": HAND}, budget=10, window=4)
    with recipe.apply(model, record_indices=True) as session:
        with torch.no_grad():
            out = model(random_prompt(1, T), use_cache=True)
    # window = 16..19; the 6 best of 0..15 are 1 (9.0), 10 (8.0), 6 (7.0), 14 (6.0), then the 3.0 tie -> 3, 4
    expected = [1, 3, 4, 6, 10, 14, 16, 17, 18, 19]
    assert session.selections
    for idx, selection in session.selections.items():
        assert selection.indices[0].tolist() == [expected, expected]
        layer = out.cache.layers[idx]
        assert isinstance(layer, CompressedLayer)
        assert layer.physical_length == 10 and layer.get_seq_length() == T


def test_gqa_cache_is_b_hkv_budget_d(family):
    model = tiny_model(family)
    with Recipe(budget=12).apply(model):
        with torch.no_grad():
            out = model(random_prompt(2, 31), use_cache=True)
    compressed = [layer for layer in out.cache.layers if isinstance(layer, CompressedLayer)]
    assert compressed
    for layer in compressed:
        assert tuple(layer.keys.shape) == (2, 2, 12, 16)  # (B, Hkv, budget, D) with Hq=4 != Hkv=2
        assert tuple(layer.values.shape) == (2, 2, 12, 16)


def test_sliding_window_layers_are_left_alone():
    model = tiny_model("gemma3")
    with Recipe(budget=12).apply(model):
        with torch.no_grad():
            out = model(random_prompt(1, 31), use_cache=True)
    kinds = [type(layer).__name__ for layer in out.cache.layers]
    assert kinds == ["DynamicSlidingWindowLayer", "CompressedLayer", "DynamicSlidingWindowLayer", "CompressedLayer"]


def test_no_state_leaks_between_prompts():
    model = tiny_model("llama")
    recipe = Recipe(budget=12)
    first, second = random_prompt(1, 40, seed=1), random_prompt(1, 33, seed=2)
    with recipe.apply(model):
        with torch.no_grad():
            model(first, use_cache=True)
            after = model(second, use_cache=True).cache
    with recipe.apply(model):
        with torch.no_grad():
            alone = model(second, use_cache=True).cache
    for a, b in zip(after.layers, alone.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_hooks_removed_on_exit_and_on_exception():
    model = tiny_model("qwen3")
    assert _hooks(model) == 0
    with Recipe(budget=12).apply(model) as session:
        assert session.num_hooks > 0 and _hooks(model) == session.num_hooks
    assert _hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with Recipe(budget=12).apply(model):
            raise RuntimeError("boom")
    assert _hooks(model) == 0


def test_nested_apply_is_refused():
    model = tiny_model("llama")
    with Recipe(budget=12).apply(model):
        with pytest.raises(RuntimeError, match="already applied"):
            with Recipe(budget=16).apply(model):
                pass
    assert _hooks(model) == 0


def test_unsupported_family_fails_at_attach_naming_supported_ones():
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
    with pytest.raises(UnsupportedModelError, match="llama.*qwen3.*phi3"):
        Recipe(budget=12).apply(GPT2LMHeadModel(config))


def test_ratio_leaving_less_than_the_window_keeps_the_minimum_with_a_warning():
    """Issue 12 changed this rule: a short prompt must not abort a mixed-length run (it used to raise)."""
    model = tiny_model("llama")
    with pytest.warns(UserWarning, match=r"compression_ratio=0.9 leaves fewer entries than the 8 always kept .* "
                                         r"prompts shorter than 76 tokens; such prompts keep min\(T, 8\) entries"):
        with Recipe(compression_ratio=0.9, window=8).apply(model):
            with torch.no_grad():
                cache = model(random_prompt(1, 40), use_cache=True).cache
    assert all(layer.kept_counts().tolist() == [[8, 8]] for layer in cache.layers)


def test_right_padding_is_rejected():
    model = tiny_model("llama")
    mask = torch.ones(1, 30, dtype=torch.long)
    mask[0, -3:] = 0
    with pytest.raises(ValueError, match="left padding"):
        with Recipe(budget=12).apply(model):
            with torch.no_grad():
                model(random_prompt(1, 30), attention_mask=mask, use_cache=True)


def test_sampling_generation_runs_on_compressed_cache():
    model = tiny_model("mistral")
    torch.manual_seed(0)
    with Recipe(budget=12).apply(model):
        out = model.generate(random_prompt(2, 40), max_new_tokens=5, do_sample=True, top_k=20)
    assert out.shape == (2, 45)
