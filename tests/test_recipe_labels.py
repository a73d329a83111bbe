"""One place from a label (preset, size, overrides) to a recipe, and the preset override rules in Recipe."""

from __future__ import annotations

import pytest

from kvpress_lab import Recipe
from kvpress_lab.benchmarks.sweep import grid_keys, grid_record, plan_cells
from kvpress_lab.recipe_labels import FULL, CacheSize, budget_free, recipe_for


def test_a_size_is_a_budget_a_ratio_or_neither_and_reads_back_from_its_slot():
    for size, value, key in ((CacheSize(budget=64), 64, "64"), (CacheSize(ratio=0.5), "r0.5", "r0.5"), (CacheSize(), None, "-")):
        assert (size.value, size.key) == (value, key) and CacheSize.parse(value) == size
    assert CacheSize(ratio=0.75).row_fields() == {"budget": None, "compression_ratio": 0.75}
    assert CacheSize(budget=64).recipe_fields() == {"budget": 64} and CacheSize().recipe_fields() == {}


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"budget": 64, "ratio": 0.5}, "a budget or a ratio, not both"),
    ({"budget": 0}, "budget must be an integer >= 1"),
    ({"budget": True}, "budget must be an integer >= 1"),
    ({"ratio": 1.0}, r"ratio must be a number in \[0, 1\)"),
])
def test_a_size_refuses_what_cannot_be_one(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        CacheSize(**kwargs)


@pytest.mark.parametrize("slot", ["x0.5", 3.5, "64", False])
def test_a_slot_that_is_no_size_is_refused(slot):
    with pytest.raises(ValueError, match="a cell size is a budget"):
        CacheSize.parse(slot)


def test_recipe_for_is_the_preset_with_its_size_and_overrides():
    assert recipe_for(FULL) is None
    assert recipe_for("snapkv", CacheSize(budget=64), window=4) == Recipe.preset("snapkv", budget=64, window=4)
    assert recipe_for("snapkv", CacheSize(ratio=0.5)).compression_ratio == 0.5
    assert budget_free(FULL) and budget_free("kvzip-threshold") and not budget_free("snapkv")
    assert not budget_free("no-such-preset")  # reported with suggestions when the recipe is built


def test_the_preset_override_rule_lives_in_recipe():
    """Replacing a preset's strategy drops the old one's hyperparameters (the command line's rule, now everywhere)."""
    recipe = Recipe.preset("snapkv", scorer="h2o")
    assert (recipe.scorer, dict(recipe.scorer_kwargs), recipe.allocator) == ("h2o", {}, "uniform")
    given = Recipe.preset("snapkv", scorer="h2o", scorer_kwargs={"chunk_size": 32})
    assert dict(given.scorer_kwargs) == {"chunk_size": 32}  # kwargs given with the new strategy are its own
    same = Recipe.preset("snapkv", scorer="snapkv_window", scorer_kwargs={"kernel_size": 5})
    assert same.scorer_kwargs["kernel_size"] == 5 and same.scorer_kwargs["pooling"] == "max"  # merged: same strategy
    assert Recipe.preset("snapkv", compression_ratio=0.5).budget is None
    assert Recipe.preset_changes("snapkv", scorer="h2o")[0].startswith("scorer=h2o (was snapkv_window; the preset's "
                                                                        "scorer_kwargs kernel_size=7")
    assert Recipe.preset_changes("snapkv", budget=64) == []  # a size the preset leaves open is no change


def test_cells_carry_a_size_and_their_keys_and_grids_are_the_files_format():
    cells = plan_cells(["full", "snapkv", "kvzip-threshold"], [64], ["a"], ratios=[0.5])
    assert [cell.key for cell in cells] == ["full|-|a", "snapkv|64|a", "snapkv|r0.5|a", "kvzip-threshold|-|a"]
    record = grid_record(cells)
    assert record["recipes"] == {"full": [None], "snapkv": [64, "r0.5"], "kvzip-threshold": [None]}  # as older files
    assert grid_keys(record) == [cell.key for cell in cells]
    assert [cell.budget for cell in cells] == [None, 64, None, None]
