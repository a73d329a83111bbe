"""The adaptive (CAKE-style, scope "global") allocator: budget arithmetic, statistics, and the engine end to end."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers.tiny_models import left_pad, random_prompt, tiny_model

from kvpress_lab import BudgetRequest, Recipe, get_registry
from kvpress_lab.allocators.adaptive import AdaptiveAllocator, cake_preference, proportional_budgets
from kvpress_lab.analysis import attention_funnel


def request(stats, length=1000, budget=64, window=8) -> BudgetRequest:
    stats = torch.tensor(stats, dtype=torch.float32)
    return BudgetRequest(len(stats), 2, length, budget, window, layer_statistics=stats)


def water_level(weights: list[float], total: int, low: int, high: int) -> list[float]:
    """Reference: ``clip(c * w, low, high)`` summing to ``total``, ``c`` found among the breakpoints (floats)."""
    clip = lambda c: [min(max(c * w, low), high) if w > 0 else low for w in weights]  # noqa: E731
    points = sorted({bound / w for w in weights if w > 0 for bound in (low, high)})
    if not points or sum(clip(points[-1])) < total:  # every positive layer capped: zero-weight layers share the rest
        zeros = sum(1 for w in weights if w == 0)
        rest = (total - high * (len(weights) - zeros)) / zeros
        return [high if w > 0 else rest for w in weights]
    previous = 0.0
    for point in points:
        if sum(clip(point)) >= total:
            f0, f1 = sum(clip(previous)), sum(clip(point))
            c = point if f1 == f0 else previous + (total - f0) * (point - previous) / (f1 - f0)
            return clip(c)
        previous = point
    raise AssertionError("unreachable")


def test_registered_as_a_global_allocator():
    entry = get_registry().get("allocator", "adaptive")
    assert entry.obj is AdaptiveAllocator and AdaptiveAllocator.scope == "global"


def test_docstring_example_is_proportional():
    assert AdaptiveAllocator().allocate(request([4.0, 3.0, 2.0, 1.0])) == [102, 77, 51, 26]


def test_floor_and_cap_bind_and_the_total_is_conserved():
    # one layer wants everything: capped at T, the rest shared; zero-statistic layers get the floor
    allocator = AdaptiveAllocator(floor=0.25)
    assert allocator.allocate(request([100.0, 1.0, 0.0, 0.0], length=200, budget=64)) == [200, 24, 16, 16]
    # once every layer with a positive statistic is capped, zero-statistic layers share the rest
    assert allocator.allocate(request([100.0, 1.0, 0.0, 0.0], length=100, budget=64)) == [100, 100, 28, 28]
    window_floor = AdaptiveAllocator(floor=0.0).allocate(request([1.0, 0.0, 0.0], budget=30, window=8))
    assert window_floor == [74, 8, 8]


def test_short_prompts_are_kept_whole_and_bad_requests_rejected():
    assert AdaptiveAllocator().allocate(request([1.0, 2.0], length=50, budget=64)) == [50, 50]
    with pytest.raises(ValueError, match=r"needs BudgetRequest.layer_statistics of shape \(L,\)=\(3,\), got None"):
        AdaptiveAllocator().allocate(BudgetRequest(3, 2, 1000, 64, 8))
    with pytest.raises(ValueError, match=r"shape \(L,\)=\(2,\), got \(3,\)"):
        AdaptiveAllocator().allocate(BudgetRequest(2, 2, 1000, 64, 8, layer_statistics=torch.ones(3)))
    with pytest.raises(ValueError, match="finite and >= 0"):
        AdaptiveAllocator().allocate(request([1.0, float("nan")]))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("statistic", "variance", "AdaptiveAllocator.statistic must be one of 'entropy', 'coverage', 'cake', got 'variance'"),
    ("floor", 1.5, r"AdaptiveAllocator.floor must be a number >= 0.0 and <= 1.0, got 1.5"),
    ("tau1", 0, r"AdaptiveAllocator.tau1 must be a number > 0.0, got 0.0"),
])
def test_fields_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveAllocator(**{field: value})


@settings(max_examples=150, deadline=None)
@given(
    stats=st.lists(st.floats(0.0, 50.0, allow_subnormal=False), min_size=1, max_size=40),
    length=st.integers(1, 5000),
    window=st.integers(1, 64),
    extra=st.integers(0, 600),
    floor=st.floats(0.0, 1.0),
)
def test_budgets_conserve_respect_bounds_follow_statistics_and_are_deterministic(stats, length, window, extra, floor):
    window = min(window, length)
    budget = window + extra
    allocator = AdaptiveAllocator(floor=floor)
    budgets = allocator.allocate(request(stats, length, budget, window))
    layers = len(stats)
    assert all(isinstance(b, int) for b in budgets) and len(budgets) == layers
    if length <= budget:
        assert budgets == [length] * layers
        return
    low = max(window, math.floor(floor * budget))
    assert sum(budgets) == layers * budget
    assert all(low <= b <= length for b in budgets)
    f32 = torch.tensor(stats, dtype=torch.float32).tolist()  # what the allocator saw
    for got, want in zip(budgets, water_level(f32 if any(f32) else [1.0] * layers, layers * budget, low, length)):
        assert abs(got - want) < 1 + 1e-6  # rounding moves a layer by less than one entry
    for i in range(layers):
        for j in range(layers):
            if f32[i] > f32[j]:
                assert budgets[i] >= budgets[j] - 1  # more dispersion never means (materially) less budget
    assert allocator.allocate(request(stats, length, budget, window)) == budgets
    assert allocator.allocate(request([4 * s for s in stats], length, budget, window)) == budgets  # scale-free


def test_proportional_budgets_rejects_infeasible_totals():
    with pytest.raises(ValueError, match=r"cannot split total=5 into 2 layers within \[3, 10\]"):
        proportional_budgets([1.0, 1.0], 5, 3, 10)


def test_statistics_rank_a_dispersed_layer_above_a_concentrated_one():
    from kvpress_lab.layer_view import LayerView

    T, D = 16, 4
    keys = torch.zeros(1, 1, T, D)
    keys[0, 0, 2, 0] = 1.0
    queries = torch.zeros(1, 2, T, D)
    queries[..., 0] = 1.0
    valid = torch.ones(1, T, dtype=torch.bool)
    flat = LayerView(0, keys, keys, valid, 4, 0.0, 2, lambda a, b: queries[:, :, a:b])  # scaling 0: uniform
    sharp = LayerView(1, keys, keys, valid, 4, 50.0, 2, lambda a, b: queries[:, :, a:b])  # all on key 2
    for statistic in ("entropy", "coverage", "cake"):
        allocator = AdaptiveAllocator(statistic=statistic)
        dispersed, concentrated = allocator.layer_statistic(flat), allocator.layer_statistic(sharp)
        assert dispersed.shape == (1,) and dispersed.dtype == torch.float32
        assert dispersed.item() > concentrated.item() >= 0, statistic


def test_cake_preference_matches_its_formula():
    probs = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # (B=1, Hq=1, W=2, T-W=2)
    valid = torch.ones(1, 2, dtype=torch.bool)
    entropy = math.log(2)  # only the first query has entropy
    variance = 2 * 0.125  # per key: var([0.5, 1.0]) = var([0.5, 0.0]) = 0.125 (unbiased)
    got = cake_preference(probs, valid, tau1=2.0, tau2=0.5).item()
    assert got == pytest.approx(entropy ** 0.5 * variance ** 2)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", layers=4)


def test_end_to_end_generate_gives_layers_different_lengths_with_the_total_conserved(llama):
    recipe = Recipe(allocator="adaptive", budget=12, window=4)
    ids = random_prompt(1, 48, seed=3)
    with recipe.apply(llama, record_indices=True) as session:
        out = llama.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 51)
    kept = [int(session.selections[idx].kept_counts.sum()) for idx in range(4)]  # entries over the 2 KV heads
    assert sum(kept) == 4 * 12 * 2 and len(set(kept)) > 1
    stats = attention_funnel(llama, ids, window=4).entropy  # the same statistic, measured independently
    expected = AdaptiveAllocator().allocate(BudgetRequest(4, 2, 48, 12, 4, layer_statistics=torch.tensor(stats)))
    assert kept == [2 * b for b in expected]
    cache = recipe.prefill(llama, ids)
    assert [layer.keys.shape[2] for layer in cache.layers] == expected


def test_end_to_end_per_row_budgets_with_padding_and_per_head_splits(llama):
    rows = [random_prompt(1, 40, seed=5)[0], random_prompt(1, 30, seed=6)[0]]
    ids, mask = left_pad(rows)
    recipe = Recipe(allocator="adaptive", budget=12, window=4, head_allocation="adaptive")
    def budgets_of(input_ids, attention_mask=None) -> torch.Tensor:
        with recipe.apply(llama, record_indices=True) as session:
            llama.generate(input_ids, attention_mask=attention_mask, max_new_tokens=1, do_sample=False, pad_token_id=0)
        kept = torch.stack([session.selections[idx].kept_counts for idx in range(4)], dim=1)  # (B, L, Hkv)
        assert (kept.sum(dim=-1) % 2 == 0).all()  # heads differ, but each layer's row total is budget * Hkv
        return kept.sum(dim=-1) // 2  # (B, L)

    batch = budgets_of(ids, mask)
    assert batch.sum(dim=1).tolist() == [4 * 12] * 2
    assert not torch.equal(batch[0], batch[1])  # each row gets its own split
    for b, row in enumerate(rows):
        alone = budgets_of(row[None])[0]
        assert (alone - batch[b]).abs().max() <= 1  # padding-aware statistics (up to float rounding)


@pytest.mark.parametrize(("name", "allocator", "heads"), [
    ("adakv", "uniform", "adaptive"), ("pyramid-adakv", "pyramid", "adaptive"), ("adaptive", "adaptive", "uniform"),
])
def test_presets_compress_a_tiny_model_to_their_total_budget(llama, name, allocator, heads):
    recipe = Recipe.preset(name, budget=16)
    assert (recipe.allocator, recipe.head_allocation, recipe.window) == (allocator, heads, 8)
    assert recipe.executor == ("ragged" if heads == "adaptive" else "gather")
    assert get_registry().get("preset", name).obj.paper.startswith("https://arxiv.org/abs/")
    with recipe.apply(llama, record_indices=True) as session:
        llama.generate(random_prompt(1, 60, seed=4), max_new_tokens=1, do_sample=False, pad_token_id=0)
    kept = torch.stack([session.selections[i].kept_counts for i in range(4)])  # (L, B=1, Hkv)
    assert int(kept.sum()) == 4 * 16 * 2
    if heads == "adaptive":
        assert len(set(kept.flatten().tolist())) > 1  # heads of a layer keep different numbers of entries
