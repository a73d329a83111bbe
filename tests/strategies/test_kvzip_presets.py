"""The KVzip presets build with their documented (kvpress KVzipPress) hyperparameters."""

from __future__ import annotations

from kvpress_lab import Preset, Recipe, get_registry
from kvpress_lab.allocators.global_topk import GlobalTopKAllocator
from kvpress_lab.allocators.threshold import ThresholdAllocator
from kvpress_lab.scorers.kvzip import KVzipScorer


def test_kvzip_presets():
    for name in ("kvzip", "kvzip-threshold"):
        entry = get_registry().get("preset", name)
        assert isinstance(entry.obj, Preset) and entry.obj.paper == "https://arxiv.org/abs/2505.23416"
        recipe = Recipe.preset(name)
        assert recipe.strategies.scorer == KVzipScorer(num_sinks=4, chunk_size=2048, prev_postfix_size=8)
        assert recipe.window == 1 and recipe.head_allocation == "adaptive" and recipe.head_floor == 0.0
        assert recipe.executor == "ragged" and recipe.minimum_budget == 5
        assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.preset("kvzip").strategies.allocator == GlobalTopKAllocator(normalise="none")
    assert Recipe.preset("kvzip-threshold").strategies.allocator == ThresholdAllocator(threshold=0.01, normalise="none")
