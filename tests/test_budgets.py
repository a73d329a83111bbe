"""kvpress_lab.budgets: the one budget rule, the request an allocator gets, and planning without a Recipe."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kvpress_lab import BudgetRequest, Recipe
from kvpress_lab.allocators.pyramid import PyramidAllocator
from kvpress_lab.allocators.uniform import UniformAllocator
from kvpress_lab.budgets import BudgetSpec, check_minimum_kept, minimum_kept
from kvpress_lab.engine.planning import plan_budgets
from kvpress_lab.scorers.sink import SinkScorer
from kvpress_lab.scorers.snapkv_window import SnapKVWindowScorer


def test_request_names_the_minimum_kept():
    request = BudgetRequest(4, 2, 1000, 64, 12)
    assert request.min_kept == 12
    with pytest.warns(DeprecationWarning, match="BudgetRequest.window is deprecated"):
        assert request.window == 12


def test_deprecated_window_keyword_still_builds_the_same_request():
    with pytest.warns(DeprecationWarning, match=r"BudgetRequest\(window=...\) is deprecated"):
        old = BudgetRequest(num_layers=4, num_kv_heads=2, prompt_length=1000, budget=64, window=8)
    assert (old.num_layers, old.prompt_length, old.budget, old.min_kept) == (4, 1000, 64, 8)
    assert PyramidAllocator().allocate(old) == PyramidAllocator().allocate(BudgetRequest(4, 2, 1000, 64, 8))
    with pytest.raises(TypeError, match="min_kept or its deprecated name window, not both"):
        BudgetRequest(4, 2, 1000, 64, 8, window=8)
    with pytest.raises(TypeError, match="needs min_kept"):
        BudgetRequest(4, 2, 1000, 64)


def test_the_new_name_raises_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BudgetRequest(4, 2, 1000, 64, min_kept=8).min_kept


@pytest.mark.parametrize(
    ("source", "extra", "fragment"),
    [
        ("request", {"prompt_length": 100}, "BudgetRequest needs budget >= min_kept"),
        ("recipe", {}, "Recipe.budget must be >= window=8"),
    ],
)
def test_one_rule_with_messages_for_each_source(source, extra, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_minimum_kept(5, 8, window=8, source=source, **extra)
    check_minimum_kept(8, 8, window=8, source=source, **extra)  # exactly the minimum is fine
    if "prompt_length" in extra:
        check_minimum_kept(5, 8, window=8, source=source, **{**extra, "prompt_length": 5})  # not compressed


def test_forced_entries_raise_the_minimum():
    assert minimum_kept(8, SinkScorer(num_sinks=4)) == 12
    assert minimum_kept(8, SnapKVWindowScorer()) == 8
    with pytest.raises(ValueError, match="Recipe.budget must be >= 12 for scorer 'sink'"):
        BudgetSpec(10, None, 8, 12, "sink")


@given(ratio=st.floats(0.0, 0.99), length=st.integers(1, 5000))
def test_spec_resolves_like_the_recipe(ratio, length):
    assert BudgetSpec(None, ratio, 1, 1).resolve(length) == Recipe(compression_ratio=ratio, window=1).resolve_budget(length)


def test_planning_needs_numbers_and_an_allocator_only():
    spec = BudgetSpec(budget=16, compression_ratio=None, window=4, min_kept=4)
    plan = plan_budgets(UniformAllocator(), spec, real_lengths=[40, 10], num_layers=3, num_kv_heads=2)
    assert plan.keep.tolist() == [[16, 16, 16], [10, 10, 10]]
    assert plan.budgets == [[16, 16, 16], [10, 10, 10]]
    assert plan.evicts(0)  # row 0 drops entries; row 1 (10 <= 16 tokens) keeps everything


def test_a_ratio_too_small_for_a_short_prompt_keeps_the_minimum():
    spec = BudgetSpec(budget=None, compression_ratio=0.9, window=8, min_kept=8)
    with pytest.warns(UserWarning, match="prompts shorter than 76 tokens; such prompts keep min"):
        plan = plan_budgets(UniformAllocator(), spec, [40, 5, 100], 2, 2)
    assert plan.keep.tolist() == [[8, 8], [5, 5], [10, 10]]  # clamped to 8; a 5-token prompt keeps everything
    assert spec.resolve(75) == 7 and spec.resolve(76) == 8  # the threshold the warning names (float: 0.1 * 75 < 7.5)


@given(ratio=st.floats(0.0, 0.999), min_kept=st.integers(1, 64))
def test_the_named_threshold_is_the_shortest_unclamped_length(ratio, min_kept):
    spec = BudgetSpec(budget=None, compression_ratio=ratio, window=min_kept, min_kept=min_kept)
    threshold = spec._shortest_unclamped()
    assert spec.resolve(threshold) >= min_kept and (threshold == 1 or spec.resolve(threshold - 1) < min_kept)


def test_statistics_reach_a_global_allocator_per_row():
    from kvpress_lab.allocators.adaptive import AdaptiveAllocator

    spec = BudgetSpec(budget=16, compression_ratio=None, window=4, min_kept=4)
    stats = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    plan = plan_budgets(AdaptiveAllocator(floor=0.0), spec, [100, 100], 2, 2, statistics=stats)
    assert plan.keep.tolist() == [[24, 8], [8, 24]]
