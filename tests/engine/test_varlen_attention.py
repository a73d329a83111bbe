"""Ragged decoding through a variable-length kernel (flash-attn's contract), checked on CPU.

The CUDA kernel itself only runs on a GPU (``tests/gpu``); here the reference kernel, an exact
loop over sequences, stands in for it, and a fake ``flash_attn`` module checks that
``attn_implementation="flash_attention_2"`` routes ragged layers to it with the right arguments.
"""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpress_lab import Recipe
from kvpress_lab.engine.model_hooks import disable_compressed_decoding, enable_compressed_decoding
from kvpress_lab.engine.prefill import padded_positions
from kvpress_lab.cache_layers.ragged import RaggedLayer
from kvpress_lab.cache_layers.varlen_attention import (
    RaggedAttentionCall,
    ragged_kernel_for,
    ragged_varlen_attention,
    reference_varlen_attention,
)
from helpers.greedy import greedy_generate
from helpers.tiny_models import left_pad, random_prompt, tiny_model

STEPS = 5


# -- the reference kernel ------------------------------------------------------------------------


def test_reference_kernel_on_hand_made_scores():
    # one sequence, 1 query, 3 keys; the middle key dominates, the last is hidden by causality
    q = torch.tensor([[[1.0, 0.0]]])  # (1, 1, 2)
    k = torch.tensor([[[0.0, 0.0]], [[50.0, 0.0]], [[99.0, 0.0]]])  # (3, 1, 2)
    v = torch.tensor([[[1.0, 1.0]], [[2.0, 3.0]], [[7.0, 7.0]]])
    cu_q = torch.tensor([0, 1], dtype=torch.int32)
    cu_k = torch.tensor([0, 2], dtype=torch.int32)  # only the first two keys are in the sequence
    out = reference_varlen_attention(q, k, v, cu_q, cu_k, 1, 2, softmax_scale=1.0, causal=True)
    torch.testing.assert_close(out, torch.tensor([[[2.0, 3.0]]]))


def test_reference_kernel_causal_mask_is_bottom_right_aligned():
    # 2 queries over 3 keys: query 0 sees keys 0-1, query 1 sees keys 0-2 (flash-attn >= 2.1)
    q = torch.zeros(2, 1, 1)
    k = torch.zeros(3, 1, 1)
    v = torch.tensor([[[0.0]], [[3.0]], [[6.0]]])
    cu_q = torch.tensor([0, 2], dtype=torch.int32)
    cu_k = torch.tensor([0, 3], dtype=torch.int32)
    out = reference_varlen_attention(q, k, v, cu_q, cu_k, 2, 3, causal=True)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.5, 3.0]))  # uniform weights over visible keys


def test_reference_kernel_gives_zero_to_queries_that_see_no_key():
    q, k, v = torch.randn(3, 2, 4), torch.randn(1, 1, 4), torch.randn(1, 1, 4)
    cu_q = torch.tensor([0, 3], dtype=torch.int32)
    cu_k = torch.tensor([0, 1], dtype=torch.int32)
    out = reference_varlen_attention(q, k, v, cu_q, cu_k, 3, 1, causal=True)
    assert torch.equal(out[:2], torch.zeros(2, 2, 4))  # queries 0, 1 precede the only key
    torch.testing.assert_close(out[2], v[0].expand(2, 4))


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), queries=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 3]), causal=st.booleans(), softcap=st.sampled_from([0.0, 5.0]), seed=st.integers(0, 999),
)
def test_reference_kernel_equals_padded_masked_attention(lengths, queries, groups, causal, softcap, seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = [max(n, queries) for n in lengths]
    S, D, width = len(lengths), 8, max(lengths)
    q = torch.randn(S * queries, groups, D, generator=generator)
    k = torch.randn(sum(lengths), 1, D, generator=generator)
    v = torch.randn(sum(lengths), 1, D, generator=generator)
    cu_k = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    cu_q = torch.arange(S + 1, dtype=torch.int32) * queries
    out = reference_varlen_attention(q, k, v, cu_q, cu_k, queries, width, causal=causal, softcap=softcap)
    for s, n in enumerate(lengths):  # the same sequence, computed densely with its own mask
        keys, values = k[cu_k[s]:cu_k[s + 1], 0], v[cu_k[s]:cu_k[s + 1], 0]  # (n, D)
        scores = q[s * queries:(s + 1) * queries].transpose(0, 1) @ keys.T / D**0.5  # (G, q, n)
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        if causal:
            visible = torch.arange(n)[None, :] <= torch.arange(queries)[:, None] + n - queries
            scores = scores.masked_fill(~visible, float("-inf"))
        want = (scores.softmax(-1) @ values).transpose(0, 1)  # (q, G, D)
        torch.testing.assert_close(out[s * queries:(s + 1) * queries], want, rtol=1e-5, atol=1e-5)


def test_reference_kernel_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="multiple of key heads"):
        reference_varlen_attention(torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.randn(2, 2, 4),
                                   torch.tensor([0, 2]), torch.tensor([0, 2]), 2, 2)
    with pytest.raises(ValueError, match="dropout_p must be 0"):
        reference_varlen_attention(torch.randn(2, 2, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4),
                                   torch.tensor([0, 2]), torch.tensor([0, 2]), 2, 2, dropout_p=0.1)


# -- one ragged layer ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3), kv_heads=st.integers(1, 3), groups=st.sampled_from([1, 2]),
    new=st.integers(1, 3), softcap=st.sampled_from([None, 2.0]), seed=st.integers(0, 999),
)
def test_varlen_over_a_ragged_layer_equals_masked_dense_view(batch, kv_heads, groups, new, softcap, seed):
    generator = torch.Generator().manual_seed(seed)
    D, K = 8, 10
    valid = torch.rand(batch, kv_heads, K, generator=generator) < 0.6
    valid[..., -1] = True  # every segment keeps at least one entry
    keys, values = torch.randn(batch, kv_heads, K, D, generator=generator), torch.randn(batch, kv_heads, K, D, generator=generator)
    new_keys, new_values = torch.randn(batch, kv_heads, new, D, generator=generator), torch.randn(batch, kv_heads, new, D, generator=generator)
    query = torch.randn(batch, kv_heads * groups, new, D, generator=generator)

    dense_layer = RaggedLayer.from_dense(keys, values, valid, K)
    dense_k, dense_v = dense_layer.update(new_keys, new_values)  # (B, Hkv, Lmax, D)
    width = dense_k.shape[-2]
    causal = torch.arange(width)[None, :] <= (width - new + torch.arange(new))[:, None]  # (q, Lmax)
    visible = dense_layer.head_valid(0, groups)[:, :, None, :] & causal  # (B, Hq, q, Lmax); lengths include the new tokens
    scores = query @ dense_k.repeat_interleave(groups, 1).transpose(-1, -2) * 0.5  # (B, Hq, q, Lmax)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    want = (weights @ dense_v.repeat_interleave(groups, 1)).transpose(1, 2)  # (B, q, Hq, D)

    flat_layer = RaggedLayer.from_dense(keys, values, valid, K)
    flat_layer.returns_dense_view = False
    flat_k, flat_v = flat_layer.update(new_keys, new_values)
    assert flat_k is flat_layer.flat_keys and flat_k.shape == (int(valid.sum()) + batch * kv_heads * new, D)
    call = RaggedAttentionCall(layer=flat_layer, kernel=reference_varlen_attention)
    got, weights = ragged_varlen_attention(torch.nn.Module(), query, flat_k, flat_v, None, scaling=0.5, softcap=softcap,
                                           kvpress_lab_ragged=call)
    assert weights is None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_attention_function_refuses_calls_without_a_ragged_layer():
    q = torch.randn(1, 2, 1, 4)
    with pytest.raises(TypeError, match="RaggedAttentionCall"):
        ragged_varlen_attention(torch.nn.Module(), q, torch.randn(3, 4), torch.randn(3, 4), None)
    layer = RaggedLayer(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([[3]]), 3)
    call = RaggedAttentionCall(layer=layer, kernel=reference_varlen_attention)
    with pytest.raises(ValueError, match="flat storage"):
        ragged_varlen_attention(torch.nn.Module(), q, torch.randn(3, 4), torch.randn(3, 4), None, kvpress_lab_ragged=call)


# -- whole models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "phi3"])
def test_varlen_decoding_equals_masked_ragged_decoding(family):
    model = tiny_model(family)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (41, 23, 30)])
    recipe = Recipe(allocator="pyramid", budget=12, window=4, head_allocation="adaptive")
    masked = greedy_generate(model, ids, mask, recipe, steps=STEPS)[0]
    enable_compressed_decoding(model, ragged_kernel=reference_varlen_attention)
    try:
        varlen = greedy_generate(model, ids, mask, recipe, steps=STEPS)[0]
    finally:
        disable_compressed_decoding(model)
    assert torch.equal(varlen.sequences, masked.sequences)
    for got, want in zip(varlen.scores, masked.scores):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # routed per call, restored after each


def test_varlen_decoding_identity_when_every_head_budget_covers_the_prompt():
    model = tiny_model("mistral")
    ids = random_prompt(1, 24)
    base = greedy_generate(model, ids, None, None, steps=STEPS)[0]
    enable_compressed_decoding(model, ragged_kernel=reference_varlen_attention)
    try:
        out = greedy_generate(model, ids, None, Recipe(budget=24, head_allocation="adaptive"), steps=STEPS)[0]
    finally:
        disable_compressed_decoding(model)
    assert torch.equal(out.sequences, base.sequences)
    for got, want in zip(out.scores, base.scores):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_varlen_decoding_never_builds_the_dense_view(monkeypatch):
    model = tiny_model("qwen2")
    ids = random_prompt(2, 30)
    recipe = Recipe(budget=8, window=4, head_allocation="adaptive")

    def fail(self, flat):
        raise AssertionError("the dense view was built on the varlen path")

    monkeypatch.setattr(RaggedLayer, "_dense", fail)
    enable_compressed_decoding(model, ragged_kernel=reference_varlen_attention)
    try:
        out = greedy_generate(model, ids, None, recipe, steps=3)[0]
    finally:
        disable_compressed_decoding(model)
    assert out.sequences.shape == (2, 33)


def test_implementation_is_restored_when_the_kernel_raises():
    model = tiny_model("llama")
    ids = random_prompt(1, 20)

    def broken(*args, **kwargs):
        raise RuntimeError("kernel failure")

    enable_compressed_decoding(model, ragged_kernel=broken)
    try:
        with pytest.raises(RuntimeError, match="kernel failure"):
            greedy_generate(model, ids, None, Recipe(budget=8, window=4, head_allocation="adaptive"), steps=STEPS)[0]
    finally:
        disable_compressed_decoding(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.fixture
def fake_flash_attn(monkeypatch):
    """A stand-in ``flash_attn`` module whose varlen function records its calls and runs the reference."""
    calls = []

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, **kwargs):
        calls.append(dict(dtype=q.dtype, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                          max_seqlen_k=max_seqlen_k, causal=causal, dropout_p=dropout_p, heads=(q.shape[1], k.shape[1])))
        return reference_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                          softmax_scale=softmax_scale, causal=causal, **kwargs)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func))
    return calls


def test_flash_attention_2_routes_ragged_layers_to_the_varlen_kernel(fake_flash_attn):
    model = tiny_model("qwen2")  # every layer full attention: nothing else needs the real flash kernels
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (41, 23)])
    recipe = Recipe(budget=12, window=4, head_allocation="adaptive")
    cache = recipe.prefill(model, ids, mask)  # prefill with sdpa
    question = random_prompt(2, 3, seed=9)
    full_mask = torch.cat([mask, torch.ones_like(question)], 1)
    positions = padded_positions(full_mask)[:, -3:]
    lengths = [layer.lengths.clone() for layer in cache.layers]
    try:
        with torch.no_grad():
            want = model(question, attention_mask=full_mask, position_ids=positions, cache=copy.deepcopy(cache)).logits
            model.config._attn_implementation = "flash_attention_2"
            got = model(question, attention_mask=full_mask, position_ids=positions, cache=cache).logits
        assert model.config._attn_implementation == "flash_attention_2"
    finally:
        disable_compressed_decoding(model)
    assert len(fake_flash_attn) == len(cache.layers)
    for call, before in zip(fake_flash_attn, lengths):
        assert call["dtype"] == torch.bfloat16  # float32 model: cast for the half-precision kernel
        assert call["causal"] and call["dropout_p"] == 0.0 and call["heads"] == (2, 1)  # G query heads per segment
        assert call["cu_seqlens_q"].dtype == call["cu_seqlens_k"].dtype == torch.int32
        assert call["cu_seqlens_q"].tolist() == [3 * s for s in range(before.numel() + 1)]
        assert call["cu_seqlens_k"].tolist() == [0, *(before.reshape(-1) + 3).cumsum(0).tolist()]
        assert call["max_seqlen_k"] == int(before.max()) + 3
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.02)  # bfloat16 kernel inputs


def test_flash_attention_2_without_flash_attn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails
    with pytest.raises(ImportError, match=r"flash-attn's variable-length kernel.*attn_implementation='sdpa'"):
        ragged_kernel_for("flash_attention_2")


@pytest.mark.parametrize("implementation", ["flex_attention", "flash_attention_3"])
def test_other_implementations_are_refused_for_ragged_layers(implementation):
    with pytest.raises(NotImplementedError, match=f"got '{implementation}'"):
        ragged_kernel_for(implementation)
    assert ragged_kernel_for("sdpa") is None and ragged_kernel_for("eager") is None
