"""The refinement presets (CriticalKV, ChunkKV, merge-on-evict, re-rotated StreamingLLM): documented defaults,
identity at full budget on every family (batch 3, left padding, GQA), and the allocated counts when they evict."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import FAMILIES, left_pad, random_prompt, tiny_model

from kvpress_lab import Preset, Recipe, get_registry
from kvpress_lab.executors.chunk import ChunkExecutor
from kvpress_lab.executors.merge import MergeExecutor
from kvpress_lab.scorers.critical import CriticalScorer
from kvpress_lab.scorers.sink import SinkScorer
from kvpress_lab.scorers.snapkv_window import SnapKVWindowScorer

EXPECTED = {
    "criticalkv": ("https://arxiv.org/abs/2502.03805", CriticalScorer(base_kwargs={"kernel_size": 7, "pooling": "max"}), "gather", False),
    "chunkkv": ("https://arxiv.org/abs/2502.00299", SnapKVWindowScorer(), "chunk", False),
    "snapkv-merge": ("https://arxiv.org/abs/2406.13035", SnapKVWindowScorer(), "merge", False),
    "streamingllm-rerotated": ("https://arxiv.org/abs/2309.17453", SinkScorer(num_sinks=4), "gather", True),
}
RECIPES = {
    **{name: {} for name in EXPECTED},
    "critical-adaptive-merge": {"scorer": "critical", "executor": "merge_ragged", "head_allocation": "adaptive"},
    "chunk-over-critical": {"scorer": "critical", "executor": "chunk"},
    "rerotated-pyramid-adaptive": {"allocator": "pyramid", "head_allocation": "adaptive", "rerotate_keys": True},
}


def _recipe(name: str, budget: int) -> Recipe:
    if name in EXPECTED:
        return Recipe.preset(name, budget=budget)
    return Recipe(budget=budget, window=8, **RECIPES[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_builds_with_documented_hyperparameters(name):
    preset = get_registry().get("preset", name).obj
    paper, scorer, executor, rerotate = EXPECTED[name]
    assert isinstance(preset, Preset) and preset.paper == paper
    recipe = Recipe.preset(name)
    assert recipe.window == 8 and recipe.allocator == "uniform" and recipe.budget == 128
    assert recipe.strategies.scorer == scorer and recipe.executor == executor and recipe.rerotate_keys is rerotate
    assert Recipe.from_json(recipe.to_json()) == recipe
    if name == "chunkkv":
        assert recipe.strategies.executor == ChunkExecutor(chunk_length=20)
    if name == "snapkv-merge":
        assert recipe.strategies.executor == MergeExecutor(similarity_threshold=0.0)


def _generate(model, ids, mask):
    return model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, output_scores=True,
                          return_dict_in_generate=True, pad_token_id=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_budget_is_identity_on_a_left_padded_batch(family):
    model = tiny_model(family)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (29, 17, 23)])
    base = _generate(model, ids, mask)
    for name in RECIPES:
        with _recipe(name, ids.shape[1]).apply(model):
            out = _generate(model, ids, mask)
        assert torch.equal(out.sequences, base.sequences), name
        for got, want in zip(out.scores, base.scores):
            assert torch.equal(got, want), name


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_evicting_keeps_the_allocated_counts_and_decodes(name):
    model = tiny_model("qwen3")
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (61, 40)])
    recipe = _recipe(name, 24)
    with recipe.apply(model, record_indices=True) as session:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=True)
        plan = session.plan
        out = _generate(model, ids, mask)
    assert out.sequences.shape == (2, 65)
    for ordinal, idx in enumerate(sorted(session.selections)):
        counts = session.selections[idx].kept_counts
        budgets = torch.tensor([row[ordinal] for row in plan.budgets])
        if recipe.head_allocation == "uniform":
            assert torch.equal(counts, budgets[:, None].expand_as(counts)), name
        else:
            assert torch.equal(counts.sum(-1), budgets * counts.shape[1]), name
