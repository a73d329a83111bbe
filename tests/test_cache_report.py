"""kvpress_lab.cache_report: exact entries and bytes of uncompressed, gathered and ragged caches.

Tiny random models (Hkv=2, D=16, float32, 4 layers), a batch of two left-padded prompts of 40
and 30 real tokens (T=40). Byte counts are written out from the shapes:

* an uncompressed full layer: 2 (K, V) x B=2 x Hkv=2 x T=40 x D=16 x 4 bytes = 20480;
* a gathered (dense) layer of P slots: 2 x 2 x 2 x P x 16 x 4 bytes + (B, P) bool slot mask;
* a ragged layer of N entries: 2 x N x 16 x 4 bytes + (B, Hkv) int64 segment lengths;
* a Gemma3 sliding layer (window 8) holds the last 7 tokens: 2 x 2 x 2 x 7 x 16 x 4 = 3584.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers.tiny_models import left_pad, random_prompt, tiny_model
from transformers import DynamicCache

import kvpress_lab
from kvpress_lab import CacheReport, LayerReport, Recipe, cache_report

T, SHORT = 40, 30
FULL_LAYER = 2 * 2 * 2 * T * 16 * 4  # 20480


def dense_bytes(slots: int) -> int:
    return 2 * 2 * 2 * slots * 16 * 4 + 2 * slots


def ragged_bytes(entries: int) -> int:
    return 2 * entries * 16 * 4 + 2 * 2 * 8


@pytest.fixture(scope="module")
def prompt():
    ids = random_prompt(2, T, seed=3)
    return left_pad([ids[0], ids[1, :SHORT]])


def prefill(family: str, recipe: Recipe | None, prompt):
    model = tiny_model(family)
    ids, mask = prompt
    if recipe is None:
        with torch.no_grad():
            return model(ids, attention_mask=mask, use_cache=True).cache
    return recipe.prefill(model, ids, attention_mask=mask)


def test_is_public_and_frozen():
    assert kvpress_lab.cache_report is cache_report and {"CacheReport", "LayerReport"} <= set(kvpress_lab.__all__)
    report = cache_report(DynamicCache())
    assert dataclasses.is_dataclass(report) and report.layers == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.layers = ()  # type: ignore[misc]
    assert (report.total_bytes, report.uncompressed_bytes, report.ratio) == (0, 0, 1.0)


def test_rejects_what_is_not_a_cache():
    with pytest.raises(TypeError, match="transformers Cache with .layers"):
        cache_report(((torch.zeros(1), torch.zeros(1)),))


def test_uncompressed_cache_counts_every_slot_and_has_ratio_one(prompt):
    report = cache_report(prefill("llama", None, prompt))
    assert len(report.layers) == 4 and report.num_compressed == 0 and report.batch_size == 2
    for index, layer in enumerate(report.layers):
        assert layer == LayerReport(index=index, kind="DynamicLayer", attention="full", compressed=False, batch_size=2,
                                    num_kv_heads=2, head_dim=16, dtype="float32", kept=((T, T), (T, T)),
                                    logical_length=T, physical_length=T, nbytes=FULL_LAYER,
                                    uncompressed_nbytes=FULL_LAYER)
        assert (layer.kept_sum, layer.kept_min, layer.kept_max, layer.ratio) == (4 * T, T, T, 1.0)
    assert report.total_bytes == report.uncompressed_bytes == 4 * FULL_LAYER == 81920
    assert report.ratio == 1.0


def test_gathered_cache_keeps_the_budget_per_row_and_padding_is_never_kept(prompt):
    # budget 32: the long row keeps 32, the short one its 30 real tokens (two filler slots)
    report = cache_report(prefill("llama", Recipe(allocator="uniform", scorer="snapkv_window", budget=32), prompt))
    for layer in report.layers:
        assert (layer.kind, layer.compressed, layer.kept) == ("CompressedLayer", True, ((32, 32), (30, 30)))
        assert (layer.logical_length, layer.physical_length) == (T, 32)
        assert (layer.kept_sum, layer.kept_min, layer.kept_max) == (124, 30, 32)
        assert (layer.nbytes, layer.uncompressed_nbytes) == (dense_bytes(32), FULL_LAYER) == (16448, 20480)
    assert (report.total_bytes, report.uncompressed_bytes) == (4 * 16448, 4 * 20480)
    assert report.ratio == pytest.approx(16448 / 20480)


def test_ragged_cache_reports_per_head_counts(prompt):
    recipe = Recipe(allocator="uniform", scorer="snapkv_window", budget=16, executor="ragged", head_allocation="adaptive")
    cache = prefill("llama", recipe, prompt)
    report = cache_report(cache)
    spread = False
    for layer, held in zip(report.layers, cache.layers):
        assert layer.kind == "RaggedLayer" and layer.kept == tuple(map(tuple, held.kept_counts().tolist()))
        assert [sum(row) for row in layer.kept] == [2 * 16, 2 * 16]  # adaptive: the row's budget moves between heads
        assert layer.physical_length == layer.kept_max == held.physical_length
        assert layer.kept_sum == 64 and layer.logical_length == T
        assert (layer.nbytes, layer.uncompressed_nbytes) == (ragged_bytes(64), FULL_LAYER) == (8224, 20480)
        spread |= layer.kept_min < layer.kept_max
    assert spread, "adaptive head allocation should give some heads more than others"
    assert report.total_bytes == 4 * 8224 and report.uncompressed_bytes == 4 * FULL_LAYER


def test_sliding_layers_count_what_they_hold(prompt):
    report = cache_report(prefill("gemma3", Recipe(allocator="uniform", scorer="snapkv_window", budget=16), prompt))
    sliding, full = report.layers[0::2], report.layers[1::2]
    for layer in sliding:
        assert (layer.kind, layer.attention, layer.compressed) == ("DynamicSlidingWindowLayer", "sliding", False)
        assert (layer.kept, layer.logical_length, layer.physical_length) == (((7, 7), (7, 7)), T, 7)
        assert layer.nbytes == layer.uncompressed_nbytes == 3584 and layer.ratio == 1.0
    for layer in full:
        assert (layer.kind, layer.kept, layer.physical_length) == ("CompressedLayer", ((16, 16), (16, 16)), 16)
        assert (layer.nbytes, layer.uncompressed_nbytes) == (dense_bytes(16), FULL_LAYER) == (8224, 20480)
    assert report.num_compressed == 2
    assert (report.total_bytes, report.uncompressed_bytes) == (2 * 3584 + 2 * 8224, 2 * 3584 + 2 * 20480)


def test_uncompressed_gemma3_has_ratio_one(prompt):
    report = cache_report(prefill("gemma3", None, prompt))
    assert [layer.kind for layer in report.layers] == ["DynamicSlidingWindowLayer", "DynamicLayer"] * 2
    assert report.total_bytes == report.uncompressed_bytes == 2 * 3584 + 2 * FULL_LAYER and report.ratio == 1.0


def test_decoding_grows_logical_and_physical_lengths(prompt):
    model = tiny_model("llama")
    ids, mask = prompt
    recipe = Recipe(allocator="uniform", scorer="snapkv_window", budget=16)
    with recipe.apply(model):
        output = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    layer = cache_report(output.cache).layers[0]  # the last generated token is never fed back: 2 steps cached
    assert (layer.logical_length, layer.physical_length, layer.kept) == (T + 2, 18, ((18, 18), (18, 18)))
    assert layer.uncompressed_nbytes == 2 * 2 * 2 * (T + 2) * 16 * 4


def test_table_and_dict(prompt):
    report = cache_report(prefill("gemma3", Recipe(allocator="uniform", scorer="snapkv_window", budget=16), prompt))
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["total_bytes"] == report.total_bytes and payload["ratio"] == pytest.approx(report.ratio)
    assert payload["num_layers"] == 4 and payload["num_compressed"] == 2
    assert payload["layers"][1]["kept"] == [[16, 16], [16, 16]] and payload["layers"][1]["kept_sum"] == 64
    assert payload["layers"][0]["attention"] == "sliding" and payload["layers"][0]["ratio"] == 1.0
    lines = report.table().splitlines()
    assert lines[0].split()[:3] == ["LAYER", "KIND", "ATTN"] and len(lines) == 1 + 4 + 1
    assert lines[2].split()[:4] == ["1", "CompressedLayer", "full", "64"]
    assert lines[-1].startswith("total") and lines[-1].endswith(f"{100 * report.ratio:.1f}%")
    assert str(report) == report.table()
    assert report.summary() == ("KV cache: 23.1 KiB of 47.0 KiB uncompressed (49.1%), 4 layers (2 compressed), 2 rows")
    assert isinstance(report, CacheReport)
