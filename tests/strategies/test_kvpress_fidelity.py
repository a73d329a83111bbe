"""The ``*-kvpress`` presets keep exactly the per-layer counts NVIDIA kvpress keeps.

kvpress's formulas are restated here literally (``ScorerPress.compress``'s count and
``PyramidKVPress.get_layer_budget``, kvpress 0.5.x), on a stand-in for the attention module, so the
production code (:mod:`kvpress_lab.allocators.pyramid_kvpress`, :func:`kvpress_lab.budgets.kept_from_ratio`)
is checked against an independent transcription, float expressions in kvpress's order.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from helpers.tiny_models import tiny_model

from kvpress_lab import Recipe


def kvpress_scorer_press_kept(k_len: int, compression_ratio: float) -> int:
    """``ScorerPress.compress``: ``n_kept = max(1, int(k_len * (1 - self.compression_ratio)))``."""
    return max(1, int(k_len * (1 - compression_ratio)))


def kvpress_pyramid_layer_budget(module, q_len: int, compression_ratio: float, window_size: int, beta: int) -> int:
    """``PyramidKVPress.get_layer_budget``, line by line."""
    assert beta >= 1
    max_capacity_prompt = window_size + q_len * (1 - compression_ratio)
    min_num = (max_capacity_prompt - window_size) / beta
    max_num = (max_capacity_prompt - window_size) * 2 - min_num
    if max_num >= q_len - window_size:
        max_num = q_len - window_size
        min_num = (max_capacity_prompt - window_size) * 2 - max_num
    if not (q_len >= max_num >= min_num >= window_size):
        return round(q_len * (1 - compression_ratio))
    steps = (max_num - min_num) / (module.config.num_hidden_layers - 1)
    return round(max_num - module.layer_idx * steps)


def kvpress_pyramid_budgets(num_layers: int, q_len: int, compression_ratio: float, window_size: int, beta: int = 20) -> list[int]:
    config = SimpleNamespace(num_hidden_layers=num_layers)
    return [kvpress_pyramid_layer_budget(SimpleNamespace(config=config, layer_idx=layer), q_len, compression_ratio, window_size, beta)
            for layer in range(num_layers)]


def our_budgets(preset: str, num_layers: int, length: int, ratio: float, window: int) -> list[int]:
    recipe = Recipe.preset(preset, compression_ratio=ratio, window=window)
    request = recipe.budget_spec.request(num_layers, 2, length)
    return recipe.strategies.allocator.allocate(request)


LENGTHS = (300, 1000, 2048, 4009, 4011, 8191)
DEPTHS = (2, 16, 30, 32)
WINDOWS = (16, 64)
RATIOS = (0.1, 0.25, 0.5, 0.7, 0.75, 0.9)
GRID = [case for case in itertools.product(LENGTHS, DEPTHS, WINDOWS, RATIOS)
        # kvpress keeps fewer than its window on prompts this short; here the window always fits (documented)
        if kvpress_scorer_press_kept(case[0], case[3]) >= case[2]]


@pytest.mark.parametrize(("length", "layers", "window", "ratio"), GRID)
def test_pyramidkv_kvpress_keeps_kvpress_per_layer_counts(length, layers, window, ratio):
    assert our_budgets("pyramidkv-kvpress", layers, length, ratio, window) == kvpress_pyramid_budgets(layers, length, ratio, window)


@pytest.mark.parametrize(("length", "layers", "window", "ratio"), GRID)
def test_snapkv_kvpress_keeps_scorer_press_counts(length, layers, window, ratio):
    assert our_budgets("snapkv-kvpress", layers, length, ratio, window) == [kvpress_scorer_press_kept(length, ratio)] * layers


def test_the_grid_covers_both_branches_of_kvpress_pyramid():
    """Pyramid and SnapKV-fallback cases both occur, so the tests above exercise each branch."""
    shapes = {len(set(kvpress_pyramid_budgets(layers, length, ratio, window))) > 1 for length, layers, window, ratio in GRID}
    assert shapes == {True, False}


def test_the_issue_examples():
    # ratio 0.75 on a 2K prompt, W=64: kvpress falls back to SnapKV's count in every layer
    assert set(our_budgets("pyramidkv-kvpress", 30, 2048, 0.75, 64)) == {512}
    assert our_budgets("snapkv-kvpress", 30, 2048, 0.75, 64) == [512] * 30
    # truncation, not rounding
    assert Recipe.preset("snapkv-kvpress", compression_ratio=0.5).resolve_budget(4009) == 2004
    assert Recipe.preset("snapkv", compression_ratio=0.5).resolve_budget(4009) == 2005
    # kvpress's float error is reproduced too: 1000 * (1 - 0.9) = 99.99999999999997
    assert Recipe(compression_ratio=0.9, ratio_rounding="kvpress").resolve_budget(1000) == 99


def test_the_engine_keeps_kvpress_counts_on_a_model():
    """Through the whole engine (allocation, selection, gather), each layer holds kvpress's count."""
    model = tiny_model("llama")
    layers, length, ratio, window = model.config.num_hidden_layers, 400, 0.5, 16
    recipe = Recipe.preset("pyramidkv-kvpress", compression_ratio=ratio, window=window)
    input_ids = torch.randint(3, 90, (1, length), generator=torch.Generator().manual_seed(1))
    cache = recipe.prefill(model, input_ids)
    expected = kvpress_pyramid_budgets(layers, length, ratio, window)
    assert len(set(expected)) > 1  # a real pyramid, not the fallback
    assert [layer.keys.shape[2] for layer in cache.layers] == expected


def test_ratio_rounding_is_validated_and_serialised():
    with pytest.raises(ValueError, match="ratio_rounding must be one of 'half_up', 'kvpress', got 'floor'"):
        Recipe(compression_ratio=0.5, ratio_rounding="floor")
    recipe = Recipe.preset("pyramidkv-kvpress", compression_ratio=0.5)
    assert Recipe.from_json(recipe.to_json()) == recipe and recipe.ratio_rounding == "kvpress"
