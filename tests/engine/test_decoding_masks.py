"""Decoding builds attention masks only where the kernel needs them, once per distinct layer shape per step.

Counts calls to the two mask builders of the decoding path — transformers' ``create_causal_mask``
as the layer protocol calls it (dense and uncompressed layers) and
:meth:`RaggedLayer.dense_view_mask` (per-head masks) — during single decoding forwards, and checks
that a ragged layer decoding under sdpa/eager keeps its padded view instead of rebuilding it.
These are deterministic properties; the speed they buy is measured by
``python -m kvpress_lab.benchmarks.decode_overhead``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab import Recipe
from kvpress_lab.cache_layers import protocol
from kvpress_lab.cache_layers.ragged import RaggedLayer
from kvpress_lab.engine.padding import padded_positions


@pytest.fixture
def mask_builds(monkeypatch):
    """A list that receives one entry per mask built (the builder's name)."""
    built: list[str] = []
    causal, per_head = protocol.create_causal_mask, RaggedLayer.dense_view_mask

    def counting_causal(*args, **kwargs):
        built.append("causal")
        return causal(*args, **kwargs)

    def counting_per_head(self, step):
        built.append("per_head")
        return per_head(self, step)

    monkeypatch.setattr(protocol, "create_causal_mask", counting_causal)
    monkeypatch.setattr(RaggedLayer, "dense_view_mask", counting_per_head)
    return built


def _prefill(model, recipe, ids, mask=None):
    return recipe.prefill(model, ids, mask)


def _step(model, cache, ids, mask=None, q=1, seed=0):
    """One decoding forward of ``q`` new tokens (attention mask extended when given); returns the new mask."""
    batch = ids.shape[0]
    new = torch.randint(3, 90, (batch, q), generator=torch.Generator().manual_seed(seed))
    kwargs = {}
    if mask is not None:
        mask = torch.cat([mask, torch.ones(batch, q, dtype=mask.dtype)], dim=1)
        kwargs = dict(attention_mask=mask, position_ids=padded_positions(mask)[:, -q:])
    with torch.no_grad():
        model(input_ids=new, cache=cache, use_cache=True, **kwargs)
    return mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("executor", ["gather", "ragged"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_one_sequence_one_new_token_builds_no_mask(executor, attn, with_mask, mask_builds):
    model = tiny_model("llama", attn)
    ids = random_prompt(1, 40)
    mask = torch.ones_like(ids) if with_mask else None
    cache = _prefill(model, Recipe(budget=12, window=4, executor=executor), ids, mask)
    mask_builds.clear()
    for step in range(3):
        mask = _step(model, cache, ids, mask, seed=step)
        assert mask_builds == [], f"step {step} built {mask_builds}"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("allocator", ["uniform", "pyramid"])
def test_a_padded_batch_builds_one_mask_per_distinct_length(allocator, attn, mask_builds):
    model = tiny_model("llama", attn, layers=6)
    ids, mask = left_pad([random_prompt(1, 60)[0], random_prompt(1, 6, seed=1)[0]])  # row 1 keeps < budget: filler
    cache = _prefill(model, Recipe(budget=16, window=4, allocator=allocator), ids, mask)
    lengths = {layer.physical_length for layer in cache.layers if not bool(layer.slot_valid.all())}  # layers with filler
    assert len(lengths) == (len(cache.layers) if allocator == "pyramid" else 1)  # pyramid: every layer its own length
    for step in range(3):
        mask_builds.clear()
        mask = _step(model, cache, ids, mask, seed=step)
        assert mask_builds == ["causal"] * len(lengths)


def test_a_chunk_of_new_tokens_builds_one_causal_mask_per_distinct_length(mask_builds):
    model = tiny_model("llama", "sdpa", layers=6)
    ids = random_prompt(1, 60)
    cache = _prefill(model, Recipe(budget=16, window=4, allocator="pyramid"), ids)
    lengths = {layer.physical_length for layer in cache.layers}
    mask_builds.clear()
    _step(model, cache, ids, q=3)
    assert mask_builds == ["causal"] * len(lengths)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_per_head_layers_build_one_mask_per_distinct_filler_pattern(attn, mask_builds):
    model = tiny_model("qwen2", attn, layers=6)
    ids = random_prompt(1, 64)
    cache = _prefill(model, Recipe(budget=12, window=4, head_allocation="adaptive"), ids)
    patterns = {(layer.physical_length, layer.filler_counts()) for layer in cache.layers}
    assert any(any(p) for _, p in patterns)  # some head holds fewer entries than another
    for step in range(2):
        mask_builds.clear()
        _step(model, cache, ids, seed=step)
        assert mask_builds == ["per_head"] * sum(1 for _, p in patterns if any(p))


def test_ragged_layers_keep_their_padded_view_across_steps(monkeypatch):
    model = tiny_model("qwen2", "sdpa")
    ids = random_prompt(1, 64)
    cache = _prefill(model, Recipe(budget=12, window=4, head_allocation="adaptive"), ids)
    rebuilt: list[int] = []
    dense = RaggedLayer._dense
    monkeypatch.setattr(RaggedLayer, "_dense", lambda self, flat: rebuilt.append(1) or dense(self, flat))
    _step(model, cache, ids)
    assert len(rebuilt) == 2 * len(cache.layers)  # keys and values, once per layer at the first step
    rebuilt.clear()
    for step in range(3):
        _step(model, cache, ids, seed=step + 1)
    assert rebuilt == []


def test_padded_and_flat_storage_hold_the_same_entries():
    generator = torch.Generator().manual_seed(0)
    valid = torch.rand(2, 3, 9, generator=generator) > 0.4
    valid[..., -1] = True
    keys, values = torch.randn(2, 3, 9, 4, generator=generator), torch.randn(2, 3, 9, 4, generator=generator)
    flat = RaggedLayer.from_dense(keys, values, valid, 9)
    padded = copy.deepcopy(flat)
    flat.returns_dense_view, padded.returns_dense_view = False, True
    for _ in range(3):
        new_keys, new_values = torch.randn(2, 3, 2, 4, generator=generator), torch.randn(2, 3, 2, 4, generator=generator)
        flat.update(new_keys, new_values)
        view_keys, view_values = padded.update(new_keys, new_values)
    assert view_keys.shape == (2, 3, int(padded.lengths.max()), 4)
    assert torch.equal(padded.kept_counts(), flat.kept_counts())
    assert padded.logical_length == flat.logical_length == 15
    for row in range(2):
        for head in range(3):
            for got, want in zip(padded.head_entries(row, head), flat.head_entries(row, head)):
                assert torch.equal(got, want)
    assert torch.equal(padded.flat_keys, flat.flat_keys) and torch.equal(padded.flat_values, flat.flat_values)
    assert padded.nbytes() == 2 * view_keys.numel() * 4 + padded.lengths.numel() * 8  # the padded view is what is held
    padded.returns_dense_view = False  # back to flat storage (a varlen kernel), once
    padded.update(new_keys, new_values)
    flat.update(new_keys, new_values)
    assert torch.equal(padded.flat_keys, flat.flat_keys) and padded.nbytes() == flat.nbytes()


def test_recorded_tokens_are_copies_of_the_inputs():
    model = tiny_model("llama")
    ids = random_prompt(1, 30)
    cache = _prefill(model, Recipe(budget=12, window=4), ids)
    new = torch.tensor([[5]])
    with torch.no_grad():
        model(input_ids=new, cache=cache, use_cache=True)
    new.fill_(7)  # a caller reusing its buffer must not rewrite what the cache consumed
    from kvpress_lab.engine.decoding import check_cache_matches

    check_cache_matches(cache, torch.cat([ids, torch.tensor([[5, 9]])], dim=1), model.config.num_key_value_heads)


def test_the_benchmark_compares_caches_holding_the_same_entries():
    from helpers.char_tokenizer import CharTokenizer
    from kvpress_lab.benchmarks.decode_overhead import make_caches, measure
    from kvpress_lab.engine.model_hooks import disable_compressed_decoding, enable_compressed_decoding

    model = tiny_model("llama")
    caches = make_caches(model, CharTokenizer(), 64, 16)
    logits = {}
    for name in ("plain", "dense", "ragged"):
        (disable_compressed_decoding if name == "plain" else enable_compressed_decoding)(model)
        cache = copy.deepcopy(caches[name])
        with torch.no_grad():
            for step, token in enumerate((5, 17, 42)):
                out = model(input_ids=torch.tensor([[token]]), position_ids=torch.tensor([[64 + step]]), cache=cache, use_cache=True)
        logits[name] = out.logits
    torch.testing.assert_close(logits["dense"], logits["plain"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits["ragged"], logits["plain"], rtol=1e-5, atol=1e-5)
    row = measure(model, CharTokenizer(), [64], 16, steps=2, repeats=1)[0]
    assert (row["masks/step plain"], row["masks/step dense"], row["masks/step ragged"]) == (0, 0, 0)
    assert row["dense_ms"] > 0 and row["ragged/dense"] > 0
