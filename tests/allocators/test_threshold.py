"""threshold: keep the entries scoring above a threshold; budgets follow each input and are reported per row."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import left_pad, random_prompt, tiny_model

from kvpress_lab import BudgetRequest, Recipe, cache_report
from kvpress_lab.allocators.threshold import ThresholdAllocator
from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers.knorm import KNormScorer

INF = float("inf")


def test_exact_budgets_on_hand_made_scores():
    stats = torch.tensor([[[0.9, 0.1, 0.7, 0.5, INF]],   # 0.9, 0.7 and the forced entry: 3 (0.5 is not > 0.5)
                          [[0.2, 0.4, 0.0, 0.3, INF]],   # the forced entry only: 1
                          [[0.6, 0.8, 0.95, 0.51, INF]]])  # everything: 5
    allocator = ThresholdAllocator(threshold=0.5, normalise="none")
    assert allocator.allocate(BudgetRequest(3, 1, 5, 2, 1, layer_statistics=stats)) == [3, 1, 5]
    # two heads: 3 entries above the threshold -> ceil(3 / 2) = 2 per head; none -> the floor min_kept = 1
    two = torch.tensor([[[0.9, 0.0, 0.8], [0.7, 0.0, 0.1]], [[0.0, 0.1, 0.2], [0.3, 0.0, 0.1]]])
    assert allocator.allocate(BudgetRequest(2, 2, 3, 1, 1, layer_statistics=two)) == [2, 1]


def _knorm_scores(model, ids):
    """knorm's scores of every layer's uncompressed cache, computed outside the engine: ``-||k||``."""
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    out = []
    for layer in cache.layers:
        view = LayerView(0, layer.keys, layer.values, torch.ones(ids.shape, dtype=torch.bool), window=1, scaling=1.0,
                         num_query_heads=4, query_fn=None)
        out.append(KNormScorer().score(view))
    return out


def test_kept_sets_and_report_match_the_threshold():
    """Hkv heads split one ranking (adaptive, no floor): exactly the entries above the threshold, rounded up per layer."""
    model = tiny_model("llama")
    ids = random_prompt(1, 37, seed=5)
    window, threshold = 2, 0.6
    recipe = Recipe(allocator="threshold", scorer="knorm", window=window, head_allocation="adaptive", head_floor=0.0,
                    allocator_kwargs={"threshold": threshold})
    with recipe.apply(model, record_indices=True) as session:
        with torch.no_grad():
            cache = model(ids, use_cache=True).cache
    report = cache_report(cache)
    for idx, scores in enumerate(_knorm_scores(model, ids)):
        s = scores[0]  # (Hkv, T)
        free = s[:, : 37 - window]
        scaled = (s - free.min()) / (free.max() - free.min())  # minmax over the unforced entries of both heads
        above = scaled > threshold
        above[:, 37 - window:] = True  # the window is always kept
        count = int(above.sum())
        budget = -(-count // 2)  # ceil over Hkv = 2
        assert int(session.plan.keep[0, idx]) == budget
        kept = torch.zeros_like(above)
        selection = session.selections[idx]
        for head in range(2):
            kept[head, selection.indices[0, head][selection.valid[0, head]]] = True
        assert bool((kept | ~above).all())  # every entry above the threshold is kept
        extra = int(kept.sum()) - count
        assert extra == 2 * budget - count  # plus only the rounding to a multiple of Hkv
        assert [list(row) for row in report.layers[idx].kept] == [kept.sum(dim=-1).tolist()]  # what the report says


def test_budgets_vary_per_row_and_are_reported():
    model = tiny_model("qwen3")
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (41, 23)])
    recipe = Recipe(allocator="threshold", scorer="snapkv_window", window=4, allocator_kwargs={"threshold": 0.3})
    with recipe.apply(model) as session:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=0,
                                 return_dict_in_generate=True)
    keep = session.plan.keep  # (B, L): what each row spent per layer
    assert keep[0].tolist() != keep[1].tolist()
    report = cache_report(out.cache)
    for ordinal, layer in enumerate(report.layers):
        assert [row[0] for row in layer.kept] == keep[:, ordinal].tolist()


def test_options_are_validated():
    with pytest.raises(ValueError, match="threshold must be a number finite"):
        ThresholdAllocator(threshold=float("nan"))
    with pytest.raises(TypeError, match="threshold must be a number"):
        ThresholdAllocator(threshold="high")
    with pytest.raises(ValueError, match="normalise must be one of"):
        ThresholdAllocator(normalise="rank")
