"""PyramidAllocator: the reference's exact numbers, budget conservation, monotonicity, bounds."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpress_lab import BudgetRequest, Recipe
from kvpress_lab.allocators.pyramid import PyramidAllocator


def reference_kept(layer_idx: int, num_hidden_layers: int, max_capacity_prompt: int, window_size: int, q_len: int, beta=20) -> int:
    """Straight transcription of KVCache-Factory ``PyramidKVCluster.update_kv``: entries the layer keeps."""
    min_num = (max_capacity_prompt - window_size) // beta
    max_num = (max_capacity_prompt - window_size) * 2 - min_num
    if max_num >= q_len - window_size:
        max_num = q_len - window_size
        min_num = (max_capacity_prompt - window_size) * 2 - max_num
    steps = (max_num - min_num) // (num_hidden_layers - 1)
    layer_capacity = max_num - layer_idx * steps
    if q_len < max_capacity_prompt:
        return q_len  # returned uncompressed
    elif q_len < (max_capacity_prompt - window_size) * 2:
        return (max_capacity_prompt - window_size) + window_size  # topk(C - w) + the window
    return layer_capacity + window_size  # topk(layer capacity) + the window


def allocate(layers, length, budget, window, **fields) -> list[int]:
    return PyramidAllocator(**fields).allocate(BudgetRequest(layers, 2, length, budget, window))


GRID = list(itertools.product(
    [2, 3, 4, 5, 7, 28, 32, 80],  # layers
    [9, 16, 17, 64, 100, 128, 129, 500, 2048],  # budget
    [1, 8, 32, 64],  # window
    [1, 10, 64, 65, 100, 111, 112, 113, 200, 1000, 4079, 4080, 4081, 7500, 20000],  # prompt length
))


def test_reference_mode_matches_transcription_on_grid():
    checked = 0
    for layers, budget, window, length in GRID:
        if budget <= window:  # the reference asserts max_capacity_prompt - window_size > 0
            continue
        expected = [reference_kept(layer, layers, budget, window, length) for layer in range(layers)]
        assert allocate(layers, length, budget, window, rounding="reference") == expected, (layers, budget, window, length)
        checked += 1
    assert checked > 1000


@pytest.mark.parametrize("beta", [1, 2, 7, 20, 33, 2.5])
def test_reference_mode_matches_transcription_for_other_betas(beta):
    for layers, budget, length in itertools.product([2, 32], [64, 128, 2048], [100, 300, 7500]):
        expected = [reference_kept(layer, layers, budget, 8, length, beta) for layer in range(layers)]
        assert allocate(layers, length, budget, 8, beta=beta, rounding="reference") == expected


def test_reference_overshoot_at_budget_64():
    budgets = allocate(32, 7500, 64, 8, rounding="reference")
    assert budgets[0] == 118 and budgets[-1] == 25
    assert sum(budgets) / 32 == 71.5  # +11.7% over the budget
    assert sum(allocate(32, 7500, 64, 8)) == 32 * 64


@settings(max_examples=300, deadline=None)
@given(
    layers=st.integers(1, 64),
    window=st.integers(0, 128),
    extra=st.integers(0, 4096),
    length=st.integers(1, 20000),
    beta=st.one_of(st.integers(1, 50), st.floats(1.0, 50.0)),
    rounding=st.sampled_from(["conserve", "reference"]),
)
def test_schedule_properties(layers, window, extra, length, beta, rounding):
    budget = max(window + extra, 1)
    budgets = allocate(layers, length, budget, window, beta=beta, rounding=rounding)
    assert len(budgets) == layers and all(type(b) is int for b in budgets)
    assert all(min(window, length) <= b <= length for b in budgets), budgets
    assert all(a >= b for a, b in zip(budgets, budgets[1:])), budgets  # non-increasing with depth
    if length <= budget:
        assert budgets == [length] * layers
    elif rounding == "conserve":
        assert sum(budgets) == layers * budget  # the mean is exactly the budget
    else:
        assert sum(budgets) >= layers * budget  # the reference's floors only ever overshoot


def test_edge_cases():
    assert allocate(4, 100, 128, 8) == [100] * 4  # budget > T: nothing compressed
    assert allocate(4, 128, 128, 8) == [128] * 4  # budget == T
    assert allocate(4, 129, 128, 8, rounding="reference") == [128] * 4  # reference's uniform branch
    assert sum(allocate(4, 129, 128, 8)) == 4 * 128 and allocate(4, 129, 128, 8)[0] == 129  # clamped to T
    assert allocate(5, 1000, 8, 8) == [8] * 5 == allocate(5, 1000, 8, 8, rounding="reference")  # budget == window
    assert allocate(1, 1000, 64, 8) == [64] == allocate(1, 1000, 64, 8, rounding="reference")  # L == 1
    assert allocate(2, 1000, 64, 8) == [117, 11]  # min = 56/20 = 2.8, max = 109.2, both + 8
    assert allocate(2, 1000, 64, 8, rounding="reference") == [118, 10]  # min = 56 // 20 = 2
    assert allocate(3, 5, 4, 0) == [5, 4, 3]  # window 0, clamped: max = 5, min = 3
    assert allocate(3, 1, 1, 8) == [1, 1, 1]  # window larger than a 1-token prompt


def test_conserve_ties_go_to_shallower_layers():
    # room 3, beta 2: exact targets 12.5, 11.5, 10.5, 9.5 (sum 44 = 4 * 11); the 2 leftover entries go on top
    assert allocate(4, 1000, 11, 8, beta=2) == [13, 12, 10, 9]


def test_beta_one_is_uniform():
    assert allocate(8, 5000, 100, 8, beta=1) == [100] * 8


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"beta": 0.5}, ValueError, r"PyramidAllocator\.beta must be a number >= 1.0, got 0.5"),
        ({"beta": "20"}, TypeError, r"PyramidAllocator\.beta must be a number"),
        ({"rounding": "floor"}, ValueError, r"PyramidAllocator\.rounding must be one of 'conserve', 'reference', got 'floor'"),
    ],
)
def test_field_validation(fields, error, match):
    with pytest.raises(error, match=match):
        PyramidAllocator(**fields)


def test_budget_below_window_is_rejected_when_compressing():
    with pytest.raises(ValueError, match="budget >= min_kept.*budget=4, min_kept=8"):
        allocate(4, 100, 4, 8)
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1, got 0"):
        allocate(0, 100, 64, 8)


def test_recipe_builds_pyramid_by_name():
    recipe = Recipe(allocator="pyramid", allocator_kwargs={"beta": 10, "rounding": "reference"})
    assert recipe.strategies.allocator == PyramidAllocator(beta=10, rounding="reference")
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_budget_table_script(capsys, tmp_path):
    from kvpress_lab.benchmarks.pyramid_budgets import main

    out = tmp_path / "table.json"
    assert main(["--layers", "32", "--budgets", "64", "2048", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "71.50  +11.72%" in text and "64.00   +0.00%" in text
    record = json.loads(out.read_text())
    assert [row["mean"] for row in record["rows"]] == [64.0, 71.5, 2048.0, 2048.5]
