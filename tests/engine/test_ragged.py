"""Per-head (AdaKV-style) budgets on a ragged cache: exact decoding, real savings, split properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpress_lab import Recipe
from kvpress_lab.engine.decoding import COMPRESSED_FLAG
from kvpress_lab.engine.model_hooks import disable_compressed_decoding, enable_compressed_decoding
from kvpress_lab.engine.prefill import padded_positions
from kvpress_lab.cache_layers.ragged import RaggedLayer
from kvpress_lab.head_allocation import adaptive_head_budgets
from helpers.greedy import STEPS
from helpers.greedy import greedy_generate as _generate
from helpers.tiny_models import left_pad, random_prompt, tiny_model



@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_ragged_layers_holding_everything_decode_like_dynamic_layers(attn):
    model = tiny_model("qwen3", attn)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (19, 11)])
    base, _ = _generate(model, ids, mask)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=padded_positions(mask), use_cache=True)
    cache = out.cache
    for idx, layer in enumerate(cache.layers):
        valid = mask.bool()[:, None, :].expand(-1, layer.keys.shape[1], -1)
        cache.layers[idx] = RaggedLayer.from_dense(layer.keys, layer.values, valid, ids.shape[1])
    setattr(cache, COMPRESSED_FLAG, True)
    first = out.logits[:, -1].argmax(-1, keepdim=True)
    enable_compressed_decoding(model)
    try:
        cont = model.generate(torch.cat([ids, first], 1), attention_mask=torch.cat([mask, torch.ones_like(first)], 1),
                              cache=cache, max_new_tokens=STEPS - 1, do_sample=False, output_scores=True,
                              return_dict_in_generate=True, pad_token_id=0)
    finally:
        disable_compressed_decoding(model)
    assert torch.equal(cont.sequences, base.sequences)
    for got, want in zip(cont.scores, base.scores[1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_ragged_equals_dense_when_heads_get_equal_budgets(family, attn):
    model = tiny_model(family, attn)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (41, 23, 30)])
    dense, dense_session = _generate(model, ids, mask, Recipe(budget=16, window=4))
    ragged, ragged_session = _generate(model, ids, mask, Recipe(budget=16, window=4, executor="ragged"))
    for idx, selection in dense_session.selections.items():
        assert torch.equal(selection.indices, ragged_session.selections[idx].indices)
    assert torch.equal(dense.sequences, ragged.sequences)
    for got, want in zip(ragged.scores, dense.scores):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_ragged_identity_when_every_head_budget_covers_the_prompt():
    model = tiny_model("mistral")
    ids = random_prompt(1, 24)
    base, _ = _generate(model, ids)
    out, _ = _generate(model, ids, recipe=Recipe(budget=24, head_allocation="adaptive"))
    assert torch.equal(out.sequences, base.sequences)
    for got, want in zip(out.scores, base.scores):
        assert torch.equal(got, want)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_adaptive_heads_decode_like_a_per_head_masked_full_cache(attn):
    """One layer, per-head kept sets: decoding equals the full cache with evicted entries masked per head."""
    model = tiny_model("llama", attn, layers=1)
    T = 33
    ids = random_prompt(1, T, seed=4)
    out, session = _generate(model, ids, recipe=Recipe(budget=12, window=4, head_allocation="adaptive", head_floor=0.0))
    selection = session.selections[0]
    counts = selection.valid.sum(-1)[0]
    assert counts.sum() == 24 and counts[0] != counts[1], counts  # heads really got different budgets

    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    kept = torch.zeros(1, 2, T, dtype=torch.bool)
    for h in range(2):
        kept[0, h, selection.indices[0, h][selection.valid[0, h]]] = True
    token = out.sequences[:, T:T + 1]
    for step in range(STEPS - 1):
        allowed = torch.cat([kept, torch.ones(1, 2, step + 1, dtype=torch.bool)], dim=-1).repeat_interleave(2, dim=1)
        mask = allowed[:, :, None, :]  # (B, Hq, 1, kv)
        if attn == "eager":
            mask = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
        with torch.no_grad():
            logits = model(token, attention_mask=mask, position_ids=torch.tensor([[T + step]]), cache=cache).logits[:, -1]
        torch.testing.assert_close(out.scores[step + 1], logits, rtol=1e-4, atol=1e-4)
        token = logits.argmax(-1, keepdim=True)
        assert int(token) == int(out.sequences[0, T + step + 1])


def test_ragged_cache_holds_only_kept_entries():
    model = tiny_model("qwen2")
    recipe = Recipe(budget=12, window=4, head_allocation="adaptive")
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (64, 40)])
    with recipe.apply(model):
        with torch.no_grad():
            cache = model(ids, attention_mask=mask, position_ids=padded_positions(mask), use_cache=True).cache
    for layer in cache.layers:
        assert isinstance(layer, RaggedLayer)
        entries = int(layer.lengths.sum())
        assert entries == 2 * 2 * 12  # B * Hkv * budget, wherever the heads spent it
        per_entry = 2 * layer.flat_keys.shape[-1] * layer.flat_keys.element_size()  # key + value
        payload = entries * per_entry
        assert layer.nbytes() >= payload
        assert layer.nbytes() - payload <= 0.01 * payload  # metadata within 1%


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3), heads=st.integers(1, 4), length=st.integers(2, 40),
    budget=st.integers(1, 40), window=st.integers(0, 6), alpha=st.floats(0, 1), seed=st.integers(0, 10_000),
)
def test_adaptive_split_properties(batch, heads, length, budget, window, alpha, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, heads, length, generator=generator)
    real = torch.randint(1, length + 1, (batch,), generator=generator)
    candidates = torch.arange(length)[None, :] >= (length - real)[:, None]  # left padding
    forced = (torch.arange(length) >= length - window).expand(batch, heads, -1) & candidates[:, None, :]
    keep = torch.minimum(torch.full((batch,), budget), real).clamp(min=min(window, 1))
    keep = torch.maximum(keep, forced[:, 0].sum(-1))
    split = adaptive_head_budgets(scores, keep, forced, candidates, alpha)
    for b in range(batch):
        n = int(real[b])
        assert int(split[b].sum()) == min(int(keep[b]), n) * heads
        assert bool((split[b] <= n).all())
        free = int(keep[b]) - int(forced[b, 0].sum())
        if int(keep[b]) < n:
            assert bool((split[b] >= int(forced[b, 0].sum()) + int(alpha * free)).all())
