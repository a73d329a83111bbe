"""The example third-party plugin (examples/kvpress_lab_example_plugin) works like a built-in.

It must be installed (``scripts/setup.sh`` does it): these tests fail, rather than skip, when it is
missing, since the plugin mechanism is then untested.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

import kvpress_lab
from kvpress_lab import LayerView, Recipe
from kvpress_lab.registry import ENTRY_POINT_GROUP, Registry
from kvpress_lab_example_plugin import ExampleRecencyNormScorer
from kvpress_lab_example_plugin.plugin import EXAMPLE_STREAMING
from helpers.tiny_models import random_prompt, tiny_model

PLUGIN = "kvpress-lab-example-plugin:example"


def make_view(keys: torch.Tensor, valid: torch.Tensor | None = None, window: int = 2) -> LayerView:
    batch, heads, length, dim = keys.shape
    valid = torch.ones(batch, length, dtype=torch.bool) if valid is None else valid
    return LayerView(0, keys, keys, valid, window=window, scaling=dim**-0.5, num_query_heads=2 * heads,
                     query_fn=lambda a, b: torch.zeros(batch, 2 * heads, b - a, dim))


# -- discovery ----------------------------------------------------------------------------------------


def test_distribution_declares_the_entry_point():
    dist = importlib.metadata.distribution("kvpress-lab-example-plugin")
    points = {ep.name: ep.value for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP}
    assert points == {"example": "kvpress_lab_example_plugin.plugin"}
    assert "kvpress-lab" in " ".join(dist.requires or [])


def test_discovered_and_listed_with_its_plugin_name():
    registry = Registry()
    assert PLUGIN in registry.plugins()
    scorer = registry.get("scorer", "example_recency")
    assert (scorer.obj, scorer.plugin) == (ExampleRecencyNormScorer, PLUGIN)
    assert scorer.summary.startswith("Key norm x recency")
    preset = registry.get("preset", "example-streaming")
    assert (preset.obj, preset.plugin) == (EXAMPLE_STREAMING, PLUGIN)
    rows = {(entry.role, entry.name): entry.plugin for entry in kvpress_lab.available()}
    assert rows["scorer", "example_recency"] == rows["preset", "example-streaming"] == PLUGIN


# -- used like a built-in --------------------------------------------------------------------------------


def test_recipe_with_the_plugin_scorer():
    recipe = Recipe(scorer="example_recency")
    assert recipe.strategies.scorer == ExampleRecencyNormScorer(recency_weight=0.5, half_life=64)
    tuned = Recipe(scorer="example_recency", scorer_kwargs={"recency_weight": 1, "half_life": 16})
    assert tuned.strategies.scorer == ExampleRecencyNormScorer(recency_weight=1, half_life=16)
    assert Recipe.from_json(tuned.to_json()) == tuned


def test_recipe_validates_the_plugin_hyperparameters():
    with pytest.raises(ValueError, match=r"ExampleRecencyNormScorer\.recency_weight must be a number >= 0\.0 and <= 1\.0, got 1\.5\."):
        Recipe(scorer="example_recency", scorer_kwargs={"recency_weight": 1.5})
    with pytest.raises(ValueError, match=r"ExampleRecencyNormScorer\.half_life must be an integer >= 1, got 0\."):
        Recipe(scorer="example_recency", scorer_kwargs={"half_life": 0})
    with pytest.raises(TypeError, match=r"has no parameter 'half_lif'; accepted: recency_weight, half_life\."):
        Recipe(scorer="example_recency", scorer_kwargs={"half_lif": 8})
    with pytest.raises(kvpress_lab.UnknownStrategyError, match="Did you mean 'example_recency'"):
        Recipe(scorer="example_recncy")


def test_plugin_preset():
    recipe = Recipe.preset("example-streaming", budget=32, scorer_kwargs={"half_life": 8})
    assert (recipe.allocator, recipe.scorer, recipe.window, recipe.budget) == ("uniform", "example_recency", 8, 32)
    assert recipe.scorer_kwargs == {"recency_weight": 0.5, "half_life": 8}
    assert recipe.preset_name == "example-streaming"
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_plugin_recipe_compresses_a_model_during_generate():
    model = tiny_model("llama")
    ids = random_prompt(1, 40)
    recipe = Recipe.preset("example-streaming", budget=16)
    with recipe.apply(model, record_indices=True) as session:
        out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 44)
    assert sorted(session.selections) == list(range(model.config.num_hidden_layers))
    for selection in session.selections.values():
        assert selection.kept_counts.tolist() == [[16, 16]]
        assert selection.indices[0, :, -8:].tolist() == [list(range(32, 40))] * 2  # the window is kept


# -- the scorer's contract --------------------------------------------------------------------------------


def test_scores_shape_dtype_device_and_padding():
    keys = torch.randn(2, 3, 10, 8, dtype=torch.float16)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :4] = False  # row 1 is left-padded
    scores = ExampleRecencyNormScorer().score(make_view(keys, valid))
    assert scores.shape == (2, 3, 10) and scores.dtype == torch.float32 and scores.device == keys.device
    assert torch.isfinite(scores).all()
    assert (scores[1, :, :4] == 0).all()
    assert ((scores[valid[:, None, :].expand_as(scores)] >= 0) & (scores[valid[:, None, :].expand_as(scores)] <= 1)).all()


def test_pure_recency_prefers_later_tokens():
    scores = ExampleRecencyNormScorer(recency_weight=1.0, half_life=3).score(make_view(torch.randn(1, 2, 12, 4)))
    assert (scores.diff(dim=-1) > 0).all()
    assert torch.allclose(scores[0, 0, -4], torch.tensor(0.5))  # three tokens from the end: one half-life


def test_pure_norm_prefers_small_keys():
    keys = torch.randn(1, 2, 12, 4)
    scores = ExampleRecencyNormScorer(recency_weight=0.0).score(make_view(keys))
    norms = keys.norm(dim=-1)
    assert torch.equal(scores.argsort(dim=-1), norms.argsort(dim=-1, descending=True))
    assert torch.allclose(scores.amin(dim=-1), torch.zeros(1, 2))  # the largest key scores 0


def test_a_row_scores_the_same_alone_and_left_padded():
    keys = torch.randn(1, 2, 9, 4)
    alone = ExampleRecencyNormScorer(half_life=4).score(make_view(keys))
    padded_keys = torch.cat([torch.full((1, 2, 3, 4), 100.0), keys], dim=2)  # padding with huge keys
    valid = torch.tensor([[False] * 3 + [True] * 9])
    padded = ExampleRecencyNormScorer(half_life=4).score(make_view(padded_keys, valid))
    assert torch.allclose(padded[..., 3:], alone)


def test_all_zero_keys_score_finitely():
    scores = ExampleRecencyNormScorer().score(make_view(torch.zeros(1, 1, 5, 4)))
    assert torch.isfinite(scores).all()
