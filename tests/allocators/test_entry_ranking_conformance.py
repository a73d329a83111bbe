"""Conformance of every registered global allocator that ranks entries (``scores_statistic``): defaults only."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpress_lab import BudgetRequest, get_registry
from kvpress_lab.engine.global_statistics import ranks_scores

RANKING = [name for name in get_registry().names("allocator") if ranks_scores(get_registry().get("allocator", name).obj())]


def test_builtin_ranking_allocators_are_registered():
    assert {"global_topk", "threshold"} <= set(RANKING)


@pytest.mark.parametrize("name", RANKING)
@settings(max_examples=60, deadline=None)
@given(layers=st.integers(1, 6), kv_heads=st.integers(1, 3), length=st.integers(1, 40), pad=st.integers(0, 5),
       window=st.integers(1, 8), sinks=st.integers(0, 3), extra=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_ranking_allocator_contract(name, layers, kv_heads, length, pad, window, sinks, extra, seed):
    allocator = get_registry().get("allocator", name).obj()
    window = min(window, length)
    min_kept = min(window + sinks, length)
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(1, kv_heads, pad + length, generator=generator)
    valid = torch.zeros(1, pad + length, dtype=torch.bool)
    valid[:, pad:] = True
    forced = torch.zeros(1, kv_heads, pad + length, dtype=torch.bool)
    forced[..., pad : pad + min(sinks, length)] = True  # sinks
    forced[..., -window:] = True  # window
    stats = torch.stack([allocator.scores_statistic(scores + layer, forced, valid) for layer in range(layers)], dim=1)[0]
    request = BudgetRequest(layers, kv_heads, length, min_kept + extra, min_kept, layer_statistics=stats)
    budgets = allocator.allocate(request)
    assert isinstance(budgets, list) and len(budgets) == layers
    assert all(isinstance(b, int) and not isinstance(b, bool) for b in budgets)
    assert all(min_kept <= b <= length for b in budgets), budgets  # the window and sinks always fit
    assert allocator.allocate(request) == budgets  # deterministic
    if name == "global_topk" and length > min_kept + extra:
        assert sum(budgets) == layers * (min_kept + extra)  # the total budget is conserved
