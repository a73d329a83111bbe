"""The query-agnostic presets build with their documented hyperparameters."""

from __future__ import annotations

import pytest

from kvpress_lab import Preset, Recipe, get_registry
from kvpress_lab.scorers.compactor import CompactorScorer
from kvpress_lab.scorers.cur import CURScorer
from kvpress_lab.scorers.expected_attention import ExpectedAttentionScorer
from kvpress_lab.scorers.keydiff import KeyDiffScorer
from kvpress_lab.scorers.lagkv import LagKVScorer

EXPECTED = {
    "keydiff": (KeyDiffScorer(), 1),
    "lagkv": (LagKVScorer(num_sinks=4, lag_size=128), 1),
    "compactor": (CompactorScorer(blending=0.35, sink_size_start=8, sink_size_end=4, chunk_size=256), 4),
    "cur": (CURScorer(num_sinks=4, leverage_type="kv_product", local_window_size=16), 1),
    "expected-attention": (ExpectedAttentionScorer(n_future_positions=512, num_sinks=4), 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_builds_with_documented_hyperparameters(name):
    entry = get_registry().get("preset", name)
    assert isinstance(entry.obj, Preset) and entry.obj.paper.startswith("https://arxiv.org/abs/")
    recipe = Recipe.preset(name)
    scorer, window = EXPECTED[name]
    assert recipe.allocator == "uniform" and recipe.window == window
    assert recipe.strategies.scorer == scorer
    assert Recipe.from_json(recipe.to_json()) == recipe
