"""The learned allocator (scope "static"): budgets from a calibrated profile, validation, and end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers.tiny_models import random_prompt, tiny_model

from kvpress_lab import BudgetRequest, Recipe, get_registry
from kvpress_lab.allocators.learned import LearnedAllocator
from kvpress_lab.calibration import Profile, ProfileError, calibrate


def profile_file(tmp_path, weights, name="p.json", model="tiny") -> str:
    profile = Profile(model=model, num_layers=len(weights), statistic="entropy", weights=list(weights), settings={})
    return str(profile.save(tmp_path / name))


def test_registered_as_a_static_allocator_and_the_default_profile_loads():
    assert get_registry().get("allocator", "learned").obj is LearnedAllocator and LearnedAllocator.scope == "static"
    allocator = LearnedAllocator()
    assert allocator.loaded_profile.num_layers == 30
    budgets = allocator.allocate(BudgetRequest(30, 3, 2048, 128, 8))
    assert sum(budgets) == 30 * 128 and len(set(budgets)) > 1 and min(budgets) >= math.floor(0.2 * 128)


def test_budgets_follow_the_profile(tmp_path):
    allocator = LearnedAllocator(profile=profile_file(tmp_path, [0.4, 0.3, 0.2, 0.1]), floor=0.0)
    assert allocator.allocate(BudgetRequest(4, 2, 1000, 50, 4)) == [80, 60, 40, 20]
    assert allocator.allocate(BudgetRequest(4, 2, 70, 50, 4)) == [70, 65, 43, 22]  # capped at T, rest shared
    assert allocator.allocate(BudgetRequest(4, 2, 40, 50, 4)) == [40] * 4  # nothing to compress
    floored = LearnedAllocator(profile=profile_file(tmp_path, [0.97, 0.01, 0.01, 0.01]), floor=0.5)
    assert floored.allocate(BudgetRequest(4, 2, 1000, 50, 4)) == [125, 25, 25, 25]


def test_a_profile_for_another_layer_count_is_rejected(tmp_path):
    allocator = LearnedAllocator(profile=profile_file(tmp_path, [0.5, 0.5], model="two-layer"))
    with pytest.raises(ValueError, match=r"calibrated on 'two-layer' with 2 full-attention layers, but this model has 5") as info:
        allocator.allocate(BudgetRequest(5, 2, 1000, 64, 8))
    assert isinstance(info.value, ProfileError) and "kvpress-lab calibrate" in str(info.value)
    model = tiny_model("llama", layers=4)  # the shipped 30-layer profile on a 4-layer model fails at prefill
    with pytest.raises(ValueError, match="with 30 full-attention layers, but this model has 4"):
        Recipe(allocator="learned", budget=8, window=2).prefill(model, random_prompt(1, 20))


def test_bad_profiles_fail_when_the_recipe_is_built(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"version": 1, "model": "m", "num_layers": 2, "statistic": "entropy",
                                  "settings": {}, "weights": [1.0]}))
    with pytest.raises(ValueError, match="must be a list of num_layers=2 numbers, got 1"):
        Recipe(allocator="learned", allocator_kwargs={"profile": str(broken)})
    with pytest.raises(ValueError, match="neither an existing file nor a shipped profile"):
        Recipe(allocator="learned", allocator_kwargs={"profile": "nope"})
    with pytest.raises(ValueError, match=r"LearnedAllocator.floor must be a number >= 0.0 and <= 1.0, got -0.1"):
        LearnedAllocator(floor=-0.1)
    with pytest.raises(TypeError, match="LearnedAllocator.profile must be a path"):
        LearnedAllocator(profile=3)


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=32),
    length=st.integers(1, 4000),
    window=st.integers(1, 32),
    extra=st.integers(0, 400),
)
def test_budgets_conserve_and_stay_in_bounds(tmp_path_factory, weights, length, window, extra):
    path = profile_file(tmp_path_factory.getbasetemp(), weights, name=f"h{len(weights)}.json")
    allocator = LearnedAllocator(profile=path)
    window = min(window, length)
    budget = window + extra
    budgets = allocator.allocate(BudgetRequest(len(weights), 2, length, budget, window))
    if length <= budget:
        assert budgets == [length] * len(weights)
    else:
        assert sum(budgets) == len(weights) * budget
        assert all(max(window, math.floor(0.2 * budget)) <= b <= length for b in budgets)
    assert allocator.allocate(BudgetRequest(len(weights), 2, length, budget, window)) == budgets


def test_end_to_end_with_a_profile_calibrated_on_a_tiny_model(tmp_path):
    model = tiny_model("mistral", layers=4)
    profile = calibrate(model, [random_prompt(1, 32, seed=s)[0] for s in range(3)], window=4)
    path = str(profile.save(tmp_path / "tiny.json"))
    assert Profile.load(path) == profile
    recipe = Recipe(allocator="learned", allocator_kwargs={"profile": path}, budget=40, window=4)
    assert Recipe.from_json(recipe.to_json()) == recipe
    ids = random_prompt(1, 96, seed=9)
    expected = LearnedAllocator(profile=path).allocate(BudgetRequest(4, 2, 96, 40, 4))
    assert sum(expected) == 4 * 40 and len(set(expected)) > 1
    with recipe.apply(model, record_indices=True) as session:
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 99)
    assert [int(session.selections[i].kept_counts.sum()) for i in range(4)] == [2 * b for b in expected]
    cache = recipe.prefill(model, ids)
    assert [layer.keys.shape[2] for layer in cache.layers] == expected


def test_learned_budgets_differ_from_uniform_on_the_shipped_profile():
    budgets = torch.tensor(LearnedAllocator().allocate(BudgetRequest(30, 3, 4096, 64, 8)), dtype=torch.float32)
    assert budgets.mean().item() == 64 and budgets.std().item() > 1


def test_learned_preset_uses_the_shipped_profile():
    recipe = Recipe.preset("learned")
    assert recipe.allocator == "learned" and recipe.window == 8
    assert recipe.strategies.allocator == LearnedAllocator(profile="smollm2-135m-instruct", floor=0.2)
    assert Recipe.from_json(recipe.to_json()) == recipe
