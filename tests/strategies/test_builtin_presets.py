"""The paper's method set as presets: registered, buildable, with the documented hyperparameters."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import tiny_model

from kvpress_lab import BudgetRequest, Preset, Recipe, get_registry
from kvpress_lab.allocators.pyramid import PyramidAllocator
from kvpress_lab.allocators.pyramid_kvpress import KvpressPyramidAllocator
from kvpress_lab.scorers.h2o import H2OScorer
from kvpress_lab.scorers.sink import SinkScorer
from kvpress_lab.scorers.snapkv_window import SnapKVWindowScorer

EXPECTED = {
    "pyramidkv": ("pyramid", PyramidAllocator(beta=20), SnapKVWindowScorer(7, "max", "sum"), 8),
    "snapkv": ("uniform", None, SnapKVWindowScorer(7, "max", "sum"), 8),
    "h2o": ("uniform", None, H2OScorer(), 8),
    "streamingllm": ("uniform", None, SinkScorer(num_sinks=4), 8),
    "pyramidkv-kvpress": ("pyramid_kvpress", KvpressPyramidAllocator(beta=20), SnapKVWindowScorer(5, "avg", "mean", True), 64),
    "snapkv-kvpress": ("uniform", None, SnapKVWindowScorer(5, "avg", "mean", True), 64),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_builds_with_documented_hyperparameters(name):
    entry = get_registry().get("preset", name)
    assert isinstance(entry.obj, Preset) and entry.obj.paper.startswith("https://arxiv.org/abs/")
    recipe = Recipe.preset(name)
    allocator, allocator_obj, scorer, window = EXPECTED[name]
    assert recipe.allocator == allocator and recipe.window == window and recipe.budget == 128
    assert recipe.strategies.scorer == scorer
    if allocator_obj is not None:
        assert recipe.strategies.allocator == allocator_obj
    assert recipe.preset_name == name
    assert Recipe.from_json(recipe.to_json()) == recipe


@pytest.mark.parametrize("name", ["pyramidkv-kvpress", "snapkv-kvpress"])
def test_kvpress_flavours_need_a_budget_covering_their_window(name):
    assert Recipe.preset(name, budget=64).budget == 64
    with pytest.raises(ValueError, match="budget must be >= window=64"):
        Recipe.preset(name, budget=63)


def test_pyramidkv_reference_rounding_is_one_override_away():
    recipe = Recipe.preset("pyramidkv", budget=64, allocator_kwargs={"rounding": "reference"})
    assert recipe.strategies.allocator == PyramidAllocator(beta=20, rounding="reference")


@pytest.fixture(scope="module")
def tiny_llama():
    return tiny_model("llama")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_compresses_a_tiny_model_to_its_allocation(name, tiny_llama):
    length, budget = 90, 72
    recipe = Recipe.preset(name, budget=budget)
    input_ids = torch.randint(3, 90, (1, length), generator=torch.Generator().manual_seed(0))
    cache = recipe.prefill(tiny_llama, input_ids)
    layers = tiny_llama.config.num_hidden_layers
    window = min(recipe.window, length)
    budgets = recipe.strategies.allocator.allocate(BudgetRequest(layers, 2, length, budget, window))
    assert [layer.keys.shape[2] for layer in cache.layers] == budgets
