"""Recipe: defaults, one clear error per invalid field, presets, serialisation round trips."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpress_lab import Recipe, UnknownStrategyError
from kvpress_lab.recipe import DEFAULT_BUDGET
from kvpress_lab.registry import Registry, get_registry

#: Names registered when this module is collected (built-ins and installed plugins).
REGISTERED = Registry()


def names(role: str) -> list[str]:
    return REGISTERED.names(role)


def builds_with_defaults(role: str, name: str) -> bool:
    try:
        Recipe(**{role: name})
    except Exception:
        return False
    return True


@functools.cache
def buildable(role: str) -> list[str]:
    """Registered names that build with their defaults (test_every_registered_strategy_... checks all do)."""
    return [name for name in names(role) if builds_with_defaults(role, name)]


# -- defaults ---------------------------------------------------------------------------------------


def test_defaults():
    recipe = Recipe(allocator="uniform", scorer="snapkv_window")
    assert (recipe.executor, recipe.budget, recipe.compression_ratio, recipe.window) == ("gather", DEFAULT_BUDGET, None, 8)
    assert recipe.strategies.allocator.name == "uniform"
    assert recipe.strategies.scorer.name == "snapkv_window"
    assert recipe.strategies.executor.name == "gather"
    assert (recipe.strategies.scorer.kernel_size, recipe.strategies.scorer.pooling) == (7, "max")
    assert recipe == Recipe()


@pytest.mark.parametrize(("role", "name"), [(role, name) for role in ("allocator", "scorer", "executor") for name in names(role)])
def test_every_registered_strategy_builds_with_its_defaults(role, name):
    recipe = Recipe(**{role: name})
    assert getattr(recipe.strategies, role).name == name
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_recipe_is_immutable_and_owns_its_kwargs():
    kwargs = {"kernel_size": 5}
    recipe = Recipe(scorer_kwargs=kwargs)
    kwargs["kernel_size"] = 9
    assert recipe.scorer_kwargs == {"kernel_size": 5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.budget = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        recipe.scorer_kwargs["kernel_size"] = 3  # type: ignore[index]


# -- one clear error per invalid field ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "typo", "suggestion"),
    [("allocator", "unifrom", "uniform"), ("scorer", "snapkv_windw", "snapkv_window"), ("executor", "gathr", "gather")],
)
def test_unknown_strategy_names(field, typo, suggestion):
    with pytest.raises(UnknownStrategyError) as info:
        Recipe(**{field: typo})
    message = str(info.value)
    assert message.startswith(f"Unknown {field} {typo!r}. Did you mean {suggestion!r}? Available {field}s: ")
    assert all(repr(name) in message for name in names(field))


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field in ("allocator", "scorer", "executor") for value in (3, ["uniform"])]
    + [("allocator", None), ("scorer", None)],  # executor=None picks the default executor
)
def test_non_string_strategy_names(field, value):
    with pytest.raises(TypeError, match=rf"Recipe\.{field} must be a registered name \(str\), got .* of type {type(value).__name__}"):
        Recipe(**{field: value})


@pytest.mark.parametrize(
    ("budget", "error", "message"),
    [
        (0, ValueError, "Recipe.budget must be an integer >= 1, got 0."),
        (-64, ValueError, "Recipe.budget must be an integer >= 1, got -64."),
        (64.0, TypeError, "Recipe.budget must be an integer, got 64.0 of type float."),
        (True, TypeError, "Recipe.budget must be an integer, got True of type bool."),
        ("64", TypeError, "Recipe.budget must be an integer, got '64' of type str."),
    ],
)
def test_invalid_budget(budget, error, message):
    with pytest.raises(error) as info:
        Recipe(budget=budget)
    assert str(info.value) == message


def test_budget_smaller_than_window():
    with pytest.raises(ValueError, match=r"Recipe\.budget must be >= window=16 .* got budget=8\. Raise the budget or shrink the window"):
        Recipe(budget=8, window=16)
    with pytest.raises(ValueError, match=r"window=256 .* got budget=128\."):  # the default budget counts too
        Recipe(window=256)


@pytest.mark.parametrize(
    ("ratio", "error", "fragment"),
    [
        (-0.1, ValueError, "got -0.1."),
        (1.0, ValueError, "got 1.0."),
        (1.5, ValueError, "got 1.5."),
        (math.nan, ValueError, "got nan."),
        (math.inf, ValueError, "got inf."),
        ("0.5", TypeError, "must be a number, got '0.5' of type str."),
        (True, TypeError, "must be a number, got True of type bool."),
    ],
)
def test_invalid_compression_ratio(ratio, error, fragment):
    with pytest.raises(error) as info:
        Recipe(compression_ratio=ratio)
    message = str(info.value)
    assert message.startswith("Recipe.compression_ratio must be a number")
    assert fragment in message
    if error is ValueError:
        assert ">= 0.0 and < 1.0" in message


def test_compression_ratio_with_budget():
    with pytest.raises(ValueError, match=r"either budget or compression_ratio, not both; got budget=64 and compression_ratio=0\.5"):
        Recipe(budget=64, compression_ratio=0.5)


@pytest.mark.parametrize(
    ("window", "error", "message"),
    [(-1, ValueError, "Recipe.window must be an integer >= 0, got -1."),
     (-3, ValueError, "Recipe.window must be an integer >= 0, got -3."),
     (8.0, TypeError, "Recipe.window must be an integer, got 8.0 of type float.")],
)
def test_invalid_window(window, error, message):
    with pytest.raises(error) as info:
        Recipe(window=window)
    assert str(info.value) == message


def test_window_zero_forces_nothing_and_is_refused_where_the_window_scores():
    assert Recipe(scorer="knorm", window=0, budget=4).minimum_budget == 1 - 1  # nothing forced, no sink
    for kwargs in ({"scorer": "snapkv_window"}, {"scorer": "critical"}, {"allocator": "adaptive", "scorer": "knorm"}):
        with pytest.raises(ValueError, match=r"Recipe.window=0 .* reads the observation window's queries"):
            Recipe(window=0, **kwargs)


def test_unknown_strategy_kwarg_names_the_accepted_ones():
    with pytest.raises(TypeError) as info:
        Recipe(scorer_kwargs={"kernal_size": 5})
    assert str(info.value) == (
        "Recipe.scorer_kwargs: scorer 'snapkv_window' (SnapKVWindowScorer) has no parameter 'kernal_size'; "
        "accepted: kernel_size, pooling, reduction, pad_window."
    )
    with pytest.raises(TypeError, match=r"allocator 'uniform' \(UniformAllocator\) has no parameter 'beta'; accepted: \(none\)"):
        Recipe(allocator="uniform", allocator_kwargs={"beta": 20})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"pooling": "median"}, ValueError, "SnapKVWindowScorer.pooling must be one of 'max', 'avg', got 'median'."),
        ({"reduction": "max"}, ValueError, "SnapKVWindowScorer.reduction must be one of 'sum', 'mean', got 'max'."),
        ({"kernel_size": 0}, ValueError, "SnapKVWindowScorer.kernel_size must be an integer >= 1, got 0."),
        ({"kernel_size": 4}, ValueError, "SnapKVWindowScorer.kernel_size must be odd (same-length pooling), got 4."),
        ({"kernel_size": 7.0}, TypeError, "SnapKVWindowScorer.kernel_size must be an integer, got 7.0 of type float."),
    ],
)
def test_invalid_strategy_hyperparameter(kwargs, error, message):
    with pytest.raises(error) as info:
        Recipe(scorer_kwargs=kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kernel_size": object()}, "Recipe.scorer_kwargs must be JSON-serialisable so results record exactly what ran"),
        ({"pooling": {1, 2}}, "Recipe.scorer_kwargs must be JSON-serialisable"),
        ({1: 7}, "Recipe.scorer_kwargs keys must be parameter names (str), got 1."),
        ([("kernel_size", 7)], "Recipe.scorer_kwargs must be a mapping of parameter names to values, got list."),
    ],
)
def test_invalid_kwargs_containers(kwargs, fragment):
    with pytest.raises(TypeError) as info:
        Recipe(scorer_kwargs=kwargs)
    assert fragment in str(info.value)


def test_invalid_preset_name_field():
    with pytest.raises(TypeError, match=r"Recipe\.preset_name must be a string or None, got int"):
        Recipe(preset_name=3)


# -- budgets ------------------------------------------------------------------------------------------


def test_resolve_budget():
    assert Recipe(compression_ratio=0.75).resolve_budget(1000) == 250
    assert Recipe(compression_ratio=0.0).resolve_budget(777) == 777
    assert Recipe(compression_ratio=0.5).resolve_budget(5) == 3  # halves round up
    assert Recipe(budget=64).resolve_budget(1000) == 64
    assert Recipe(budget=64).resolve_budget(10) == 64  # the allocator caps it at T


@settings(deadline=None)
@given(ratio=st.floats(0.0, 1.0, exclude_max=True), length=st.integers(1, 1_000_000))
def test_resolve_budget_is_the_rounded_kept_fraction(ratio, length):
    budget = Recipe(compression_ratio=ratio).resolve_budget(length)
    assert isinstance(budget, int)
    assert 0 <= budget <= length
    assert abs(budget - (1.0 - ratio) * length) <= 0.5 + 1e-9 * length


# -- presets ------------------------------------------------------------------------------------------


def test_preset_with_budget():
    recipe = Recipe.preset("snapkv", budget=64)
    preset = get_registry().get("preset", "snapkv").obj
    assert (recipe.allocator, recipe.scorer, recipe.budget, recipe.preset_name) == ("uniform", "snapkv_window", 64, "snapkv")
    assert recipe.scorer_kwargs == preset.recipe["scorer_kwargs"]


def test_preset_overrides_merge_kwargs_without_touching_the_preset():
    preset = get_registry().get("preset", "snapkv").obj
    before = json.dumps(dict(preset.recipe), sort_keys=True)
    recipe = Recipe.preset("snapkv", scorer_kwargs={"kernel_size": 5})
    assert recipe.scorer_kwargs == {**preset.recipe["scorer_kwargs"], "kernel_size": 5}
    assert json.dumps(dict(preset.recipe), sort_keys=True) == before


def test_preset_with_compression_ratio():
    recipe = Recipe.preset("snapkv", compression_ratio=0.5)
    assert (recipe.budget, recipe.compression_ratio) == (None, 0.5)
    with pytest.raises(ValueError, match="either budget or compression_ratio"):
        Recipe.preset("snapkv", budget=64, compression_ratio=0.5)


def test_preset_errors():
    with pytest.raises(UnknownStrategyError, match=r"Unknown preset 'snapvk'\. Did you mean 'snapkv'\?"):
        Recipe.preset("snapvk")
    with pytest.raises(TypeError, match="bugdet"):
        Recipe.preset("snapkv", bugdet=64)
    with pytest.raises(ValueError, match=r"SnapKVWindowScorer\.pooling must be one of"):
        Recipe.preset("snapkv", scorer_kwargs={"pooling": "median"})


@pytest.mark.parametrize("name", names("preset"))
def test_every_registered_preset_builds_and_round_trips(name):
    recipe = Recipe.preset(name)
    assert recipe.preset_name == name
    assert recipe == dataclasses.replace(Recipe(**get_registry().get("preset", name).obj.recipe), preset_name=name)
    assert Recipe.from_json(recipe.to_json()) == recipe


# -- serialisation ------------------------------------------------------------------------------------

#: Valid SnapKV scorer hyperparameters (any subset).
SNAPKV_KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "kernel_size": st.integers(0, 10).map(lambda k: 2 * k + 1),
        "pooling": st.sampled_from(["max", "avg"]),
        "reduction": st.sampled_from(["sum", "mean"]),
    },
)


@st.composite
def recipes(draw) -> Recipe:
    """Valid recipes over every registered strategy (defaults) and SnapKV's hyperparameters."""
    window = draw(st.integers(1, 64))
    if draw(st.booleans()):
        # The margin over the window leaves room for a scorer's forced entries (sink's attention
        # sinks); budgets at the lower edge are covered by test_budget_smaller_than_window.
        sizing = {"budget": draw(st.integers(window + 32, 1 << 20))}
    elif draw(st.booleans()):
        sizing = {"compression_ratio": draw(st.floats(0.0, 1.0, exclude_max=True))}
    else:
        sizing = {}  # the default budget, 128 >= 64 + 32 + 32
    scorer = draw(st.sampled_from(buildable("scorer")))
    scorer_kwargs = draw(SNAPKV_KWARGS) if scorer == "snapkv_window" else {}
    allocator = draw(st.sampled_from(buildable("allocator")))
    if not getattr(get_registry().get("allocator", allocator).obj, "uses_budget", True):
        sizing = {}  # threshold: what a row keeps follows its scores; a budget is refused
    return Recipe(
        allocator=allocator,
        scorer=scorer,
        executor=draw(st.sampled_from(buildable("executor"))),
        window=window,
        scorer_kwargs=scorer_kwargs,
        preset_name=draw(st.none() | st.sampled_from(names("preset"))),
        **sizing,
    )


@settings(deadline=None, max_examples=200)
@given(recipes())
def test_dict_and_json_round_trip(recipe):
    data = recipe.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(Recipe)}
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    again = Recipe.from_dict(data)
    assert again == recipe
    assert again.strategies == recipe.strategies
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_json(recipe.to_json(indent=2)) == recipe


def test_from_dict_rejects_unknown_keys():
    data = Recipe().to_dict() | {"bugdet": 64, "extra": 1}
    with pytest.raises(TypeError) as info:
        Recipe.from_dict(data)
    message = str(info.value)
    assert "Recipe.from_dict: unknown field(s) ['bugdet', 'extra']" in message
    assert "'budget'" in message and "'scorer_kwargs'" in message


def test_from_dict_rejects_non_mappings():
    with pytest.raises(TypeError, match="Recipe.from_dict expects a mapping, got list"):
        Recipe.from_dict([("budget", 64)])


def test_from_dict_validates_like_the_constructor():
    with pytest.raises(ValueError, match=r"Recipe\.budget must be an integer >= 1, got 0\."):
        Recipe.from_dict({"budget": 0})
    with pytest.raises(UnknownStrategyError, match="Did you mean 'uniform'"):
        Recipe.from_json('{"allocator": "unifrom"}')


# -- recipes travel: hash, pickle, deepcopy, format version --------------------------------------


def _travels(recipe: Recipe) -> None:
    import copy
    import pickle

    for again in (pickle.loads(pickle.dumps(recipe)), copy.deepcopy(recipe), copy.copy(recipe)):
        assert again == recipe and hash(again) == hash(recipe)
        assert again.strategies == recipe.strategies
        assert again.to_json() == recipe.to_json()
    assert {recipe: 1}[Recipe.from_json(recipe.to_json())] == 1  # usable as a cache key


@settings(deadline=None, max_examples=100)
@given(recipes())
def test_random_recipes_hash_pickle_and_deepcopy(recipe):
    _travels(recipe)


@pytest.mark.parametrize("name", names("preset"))
def test_every_preset_hashes_pickles_and_deepcopies(name):
    _travels(Recipe.preset(name))


def test_kwargs_are_read_only_and_compare_like_dicts():
    recipe = Recipe(scorer="h2o", scorer_kwargs={"chunk_size": 64})
    assert recipe.scorer_kwargs == {"chunk_size": 64}
    with pytest.raises(TypeError):
        recipe.scorer_kwargs["chunk_size"] = 1  # type: ignore[index]
    assert hash(Recipe(scorer_kwargs={"kernel_size": 5, "pooling": "avg"})) == hash(
        Recipe(scorer_kwargs={"pooling": "avg", "kernel_size": 5}))


def test_json_carries_a_format_version_and_unknown_versions_are_refused():
    data = json.loads(Recipe().to_json())
    assert data["format_version"] == 1
    assert Recipe.from_dict({k: v for k, v in data.items() if k != "format_version"}) == Recipe()  # older files
    with pytest.raises(ValueError, match="Recipe format_version 2 is not one this kvpress_lab reads .it reads 1."):
        Recipe.from_json(json.dumps({**data, "format_version": 2}))
    with pytest.raises(ValueError, match="format_version True"):
        Recipe.from_dict({"format_version": True})
