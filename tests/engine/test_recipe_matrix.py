"""Every registered recipe on every tiny family, at awkward budgets and prompt lengths: a valid
cache or a clear error, never a crash (kvpress crashes on uneven layers and on Gemma3)."""

from __future__ import annotations

import pytest
import torch

from kvpress_lab import Recipe, get_registry
from kvpress_lab.cache_layers.dense import CompressedLayer
from kvpress_lab.cache_layers.ragged import RaggedLayer
from helpers.kvzip_prompt import scorer_kwargs
from helpers.profiles import allocator_kwargs
from helpers.tiny_models import FAMILIES, left_pad, random_prompt, tiny_model

LENGTHS = (37, 71)  # odd, prime
STEPS = 2


def _budgets(length: int, window: int) -> list[int]:
    return sorted({1, window, 64, length - 1, length, 2 * length})


def _check_run(model, recipe, ids, mask=None):
    with recipe.apply(model):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False,
                             return_dict_in_generate=True, pad_token_id=0)
    assert out.sequences.shape == (ids.shape[0], ids.shape[1] + STEPS)
    length = ids.shape[1]
    for layer in out.cache.layers:
        assert layer.get_seq_length() == length + STEPS - 1  # the last generated token is never fed back
        if isinstance(layer, (CompressedLayer, RaggedLayer)):
            assert layer.physical_length <= length + STEPS - 1


def _build(name: str, budget: int, num_layers: int) -> Recipe | None:
    preset = dict(get_registry().get("preset", name).obj.recipe)
    extra = {"allocator_kwargs": allocator_kwargs(preset["allocator"], num_layers),
             "scorer_kwargs": scorer_kwargs(preset.get("scorer", ""))}  # kvzip: prompt ids (no tokenizer)
    if not getattr(get_registry().get("allocator", preset["allocator"]).obj, "uses_budget", True):
        return Recipe.preset(name, **extra) if budget == 1 else None  # threshold: no budget, one run per length
    minimum = Recipe.preset(name, **extra).minimum_budget
    if budget < minimum:
        with pytest.raises(ValueError, match=f"budget must be >= {minimum}|budget must be >= window"):
            Recipe.preset(name, budget=budget, **extra)
        return None
    return Recipe.preset(name, budget=budget, **extra)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", get_registry().names("preset"))
def test_every_preset_on_every_family(family, preset):
    model = tiny_model(family)
    for length in LENGTHS if family == "llama" else LENGTHS[1:]:
        ids = random_prompt(1, length, seed=length)
        for budget in _budgets(length, window=8):
            recipe = _build(preset, budget, num_layers=2 if family == "gemma3" else 4)
            if recipe is not None:
                _check_run(model, recipe, ids)


@pytest.mark.parametrize("allocator", get_registry().names("allocator"))
@pytest.mark.parametrize("scorer", get_registry().names("scorer"))
@pytest.mark.parametrize("head_allocation", ["uniform", "adaptive"])
def test_every_allocator_scorer_pair_with_padding(allocator, scorer, head_allocation):
    model = tiny_model("qwen3")
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (53, 29, 41)])
    budget_free = not getattr(get_registry().get("allocator", allocator).obj, "uses_budget", True)  # threshold
    for budget in (None,) if budget_free else (9, 24, 60):
        recipe = Recipe(allocator=allocator, scorer=scorer, budget=budget, window=4, head_allocation=head_allocation,
                        allocator_kwargs=allocator_kwargs(allocator, 4), scorer_kwargs=scorer_kwargs(scorer))
        _check_run(model, recipe, ids, mask)


def test_learned_profile_for_another_depth_is_a_clear_error():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="30"):
        with Recipe.preset("learned", budget=12).apply(model):  # the shipped profile has 30 layers, the model 4
            with torch.no_grad():
                model(random_prompt(1, 40), use_cache=True)


def test_ratio_budgets_follow_each_prompt():
    model = tiny_model("llama")
    recipe = Recipe(compression_ratio=0.5, window=4)
    with recipe.apply(model) as session:
        with torch.no_grad():
            cache = model(random_prompt(1, 71), use_cache=True).cache
    assert {layer.physical_length for layer in cache.layers} == {36}  # round(0.5 * 71) = 35.5 -> 36
    assert session.plan.budgets == [[36] * 4]
