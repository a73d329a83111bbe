"""Executor conformance: every registered executor, and a third-party one, obeys the layer protocol.

Runs over every executor the registry knows (built-ins, installed plugins) plus
``test_positional`` (:mod:`helpers.positional_executor`), a third-party executor with its own
layer class. Each must: keep exactly the hand-computed entries, decode identically to the
uncompressed cache when it keeps everything, decode like an explicitly masked full cache when it
evicts (batch 2 with left padding, six families, sdpa and eager), and hold ``nbytes`` = kept
entries x bytes per entry (+ at most 1% metadata). The engine never learns the layer types.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from helpers.positional_executor import PositionalExecutorPlugin
from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab.cache_layers import CompressedCacheLayer
from kvpress_lab.engine.decoding import mark_compressed
from kvpress_lab.engine.model_hooks import disable_compressed_decoding, enable_compressed_decoding
from kvpress_lab.engine.padding import padded_positions
from kvpress_lab.registry import Registry

REGISTRY = Registry(extra_plugins=[("tests:executors", PositionalExecutorPlugin())])
EXECUTORS = REGISTRY.names("executor")
WINDOW = 2


def build(name: str):
    return REGISTRY.get("executor", name).obj()


def per_head(name: str) -> bool:
    return bool(getattr(REGISTRY.get("executor", name).obj, "per_head_budgets", False))


def merges_values(name: str) -> bool:
    return bool(getattr(REGISTRY.get("executor", name).obj, "merges_values", False))


def test_the_suite_covers_the_builtins_and_the_third_party_executor():
    assert {"gather", "ragged", "chunk", "merge", "merge_ragged", "test_positional"} <= set(EXECUTORS)


# -- kept sets on hand-made scores ---------------------------------------------------------------

SCORES = torch.tensor([
    [[5, 1, 4, 2, 0, 3, 0, 0], [0, 9, 1, 8, 2, 2, 0, 0]],  # row 0: 8 real tokens
    [[9, 9, 1, 2, 3, 3, 0, 0], [0, 0, 7, 1, 1, 0, 0, 0]],  # row 1: 2 padding slots, then 6 real
], dtype=torch.float32)  # (B=2, Hkv=2, T=8)
CANDIDATES = torch.tensor([[True] * 8, [False, False] + [True] * 6])
FORCED = torch.zeros(2, 2, 8, dtype=torch.bool)
FORCED[..., -WINDOW:] = True

CASES = {
    "uniform per row": ([[4, 4], [3, 3]], [[[0, 2, 6, 7], [1, 3, 6, 7]], [[4, 6, 7], [2, 6, 7]]]),  # tie 4 vs 5: earlier
    "per head": ([[5, 3], [3, 4]], [[[0, 2, 5, 6, 7], [1, 6, 7]], [[4, 6, 7], [2, 3, 6, 7]]]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", EXECUTORS)
def test_kept_entries_equal_the_hand_computed_sets(name, case):
    keep, expected = CASES[case]
    if case == "per head" and not per_head(name):
        pytest.skip(f"{name} keeps one count per row (per_head_budgets is False)")
    executor = build(name)
    keys, values = torch.randn(2, 2, 8, 4), torch.randn(2, 2, 8, 4)
    selection = executor.select(SCORES, torch.tensor(keep), FORCED, CANDIDATES)
    layer = executor.build_layer(keys, values, selection, 8)
    assert isinstance(layer, CompressedCacheLayer)
    assert layer.get_seq_length() == 8
    assert layer.kept_counts().tolist() == keep
    for row in range(2):
        for head in range(2):
            kept_keys, kept_values = layer.head_entries(row, head)
            torch.testing.assert_close(kept_keys, keys[row, head, expected[row][head]], rtol=0, atol=0)
            if not merges_values(name):  # merge executors fold evicted values in (tests/executors/test_merge.py)
                torch.testing.assert_close(kept_values, values[row, head, expected[row][head]], rtol=0, atol=0)


# -- decoding on tiny models ---------------------------------------------------------------------


def _batch():
    return left_pad([random_prompt(1, n, seed=n)[0] for n in (20, 15)])  # (2, 20), row 1 left-padded by 5


def _keep(name: str, real: list[int], heads: int, full: bool) -> torch.Tensor:
    if full:
        return torch.tensor(real)[:, None].expand(-1, heads).contiguous()
    counts = [[min(n, 4 + n // 3)] * heads for n in real]  # rows keep 10 and 9: row 1 gets a filler slot
    if per_head(name):
        counts = [[c[0] - 2 * (h % 2) for h in range(heads)] for c in counts]  # heads keep k, k - 2, k, ...
    return torch.tensor(counts)


def _compress(cache, executor, name: str, valid: torch.Tensor, full: bool) -> dict[int, torch.Tensor]:
    """Replace every full-attention layer by the executor's layer; return ``{layer: (B, Hkv, T) kept}``."""
    kept: dict[int, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(7)
    for idx, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            continue  # Gemma3's sliding layers are left alone
        batch, heads, length, _ = layer.keys.shape
        scores = torch.rand(batch, heads, length, generator=generator)
        forced = torch.zeros(batch, heads, length, dtype=torch.bool)
        forced[..., -WINDOW:] = True
        selection = executor.select(scores, _keep(name, valid.sum(-1).tolist(), heads, full), forced, valid)
        mask = torch.zeros(batch, heads, length, dtype=torch.bool)
        mask.scatter_(2, selection.indices, selection.valid)
        kept[idx] = mask
        cache.layers[idx] = executor.build_layer(layer.keys, layer.values, selection, length)
    mark_compressed(cache)
    return kept


def _write_back(reference, cache, kept: dict[int, torch.Tensor]) -> None:
    """Put what each compressed layer holds into the full ``reference`` cache at its kept positions.

    A no-op for executors that keep copies of the prefill's entries; for merge executors the reference
    then holds the merged values, so the masked full cache is the exact reference of what decoding reads.
    """
    for idx, mask in kept.items():
        for row in range(mask.shape[0]):
            for head in range(mask.shape[1]):
                positions = mask[row, head].nonzero().flatten()
                held_keys, held_values = cache.layers[idx].head_entries(row, head)
                reference.layers[idx].keys[row, head, positions] = held_keys
                reference.layers[idx].values[row, head, positions] = held_values


def _reference_hooks(model, kept: dict[int, torch.Tensor], new_valid: list[torch.Tensor], attn: str):
    """Pre-hooks giving each full-attention layer an explicit mask over the *full* cache: kept prefix + causal new tokens."""
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    layers = model.get_decoder().layers

    def hook(idx, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        q = hidden.shape[1]
        appended = torch.cat(new_valid, dim=-1)  # (B, A): validity of every token appended after the prompt
        prefix = kept[idx].repeat_interleave(groups, dim=1)[:, :, None, :].expand(-1, -1, q, -1)  # (B, Hq, q, T)
        first = appended.shape[1] - q
        causal = torch.arange(appended.shape[1])[None, :] <= (first + torch.arange(q))[:, None]  # (q, A)
        new = (appended[:, None, :] & causal[None])[:, None].expand(-1, prefix.shape[1], -1, -1)  # (B, Hq, q, A)
        mask = torch.cat([prefix, new], dim=-1)
        if attn == "eager":
            mask = torch.where(mask, 0.0, torch.finfo(hidden.dtype).min).to(hidden.dtype)
        kwargs["attention_mask"] = mask
        return args, kwargs

    return [layers[idx].self_attn.register_forward_pre_hook(lambda m, a, k, idx=idx: hook(idx, m, a, k), with_kwargs=True)
            for idx in kept]


def _steps(model, cache, ids, mask, hooks_factory=None):
    """Two decoding calls (3 new tokens, then 1) at the true positions; returns their logits."""
    generator = torch.Generator().manual_seed(3)
    logits, new_valid, full_mask = [], [], mask
    for q in (3, 1):
        new_ids = torch.randint(3, 90, (ids.shape[0], q), generator=generator)
        full_mask = torch.cat([full_mask, torch.ones(ids.shape[0], q, dtype=full_mask.dtype)], dim=1)
        new_valid.append(torch.ones(ids.shape[0], q, dtype=torch.bool))
        handles = hooks_factory(new_valid) if hooks_factory else []
        try:
            with torch.no_grad():
                out = model(input_ids=new_ids, attention_mask=full_mask, position_ids=padded_positions(full_mask)[:, -q:],
                            cache=cache, use_cache=True)
        finally:
            for handle in handles:
                handle.remove()
        logits.append(out.logits)
    return logits


@pytest.mark.parametrize("name", EXECUTORS)
def test_keeping_everything_decodes_like_the_uncompressed_cache(name, family):
    model = tiny_model(family)
    ids, mask = _batch()
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, position_ids=padded_positions(mask), use_cache=True).cache
    reference = copy.deepcopy(cache)
    _compress(cache, build(name), name, mask.bool(), full=True)
    enable_compressed_decoding(model)
    try:
        got = _steps(model, cache, ids, mask)
        want = _steps(model, reference, ids, mask)
    finally:
        disable_compressed_decoding(model)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", EXECUTORS)
def test_decoding_equals_an_explicitly_masked_full_cache(name, family, attn):
    model = tiny_model(family, attn)
    ids, mask = _batch()
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, position_ids=padded_positions(mask), use_cache=True).cache
    reference = copy.deepcopy(cache)
    kept = _compress(cache, build(name), name, mask.bool(), full=False)
    assert all(int(k[0].sum(-1).max()) < 20 for k in kept.values())  # something was evicted
    _write_back(reference, cache, kept)
    enable_compressed_decoding(model)
    try:
        got = _steps(model, cache, ids, mask)
    finally:
        disable_compressed_decoding(model)
    want = _steps(model, reference, ids, mask, hooks_factory=lambda new_valid: _reference_hooks(model, kept, new_valid, attn))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


# -- memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXECUTORS)
def test_nbytes_is_kept_entries_times_bytes_per_entry(name):
    heads, length, dim = 4, 200, 64
    keys, values = torch.randn(1, heads, length, dim), torch.randn(1, heads, length, dim)
    counts = [[60, 45, 60, 30]] if per_head(name) else [[60] * heads]
    forced = torch.zeros(1, heads, length, dtype=torch.bool)
    forced[..., -WINDOW:] = True
    executor = build(name)
    selection = executor.select(torch.rand(1, heads, length), torch.tensor(counts), forced, torch.ones(1, length, dtype=torch.bool))
    layer = executor.build_layer(keys, values, selection, length)
    kept_bytes = int(layer.kept_counts().sum()) * 2 * dim * keys.element_size()  # keys + values per entry
    assert kept_bytes <= layer.nbytes() <= 1.01 * kept_bytes


# -- the engine guards what an executor hands back -----------------------------------------------


def test_a_layer_outside_the_protocol_is_a_clear_plugin_error(monkeypatch):
    from dataclasses import dataclass
    from typing import ClassVar

    import kvpress_lab.registry as registry_module
    from kvpress_lab import PluginError, Recipe, hookimpl
    from kvpress_lab.executors import select_top_k

    @dataclass(frozen=True)
    class PlainLayerExecutor:
        name: ClassVar[str] = "test_plain_layer"

        def select(self, scores, keep, forced, candidates):
            return select_top_k(scores, keep, forced, candidates)

        def build_layer(self, keys, values, selection, logical_length):
            layer = DynamicLayer()
            layer.update(keys, values)
            return layer  # no kept_counts / prepare_decoding / ...: decoding could not mask it

    class Plugin:
        @hookimpl
        def kvpress_lab_register_executors(self):
            return [PlainLayerExecutor]

    monkeypatch.setattr(registry_module, "_REGISTRY", Registry(extra_plugins=[("tests:plain", Plugin())]))
    model = tiny_model("llama")
    with pytest.raises(PluginError, match="Executor 'test_plain_layer' built a DynamicLayer that lacks kept_counts, head_entries, nbytes, "
                       "prepare_decoding, physical_length; a compressed cache layer must follow"):
        with Recipe(budget=8, window=2, executor="test_plain_layer").apply(model) as session:
            with torch.no_grad():
                model(random_prompt(1, 20), use_cache=True)
    assert session.num_hooks == 0  # detached after the error
