"""global_topk: one ranking of every entry of every layer and head (KVzip's budget allocation)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import left_pad, random_prompt, tiny_model

from kvpress_lab import BudgetRequest, Recipe
from kvpress_lab.allocators.global_topk import GlobalTopKAllocator
from kvpress_lab.allocators._ranking import ranking_statistic

INF = float("inf")


def _brute_force(stats: list[list[list[float]]], budget: int) -> list[int]:
    """Per-layer winners of the top L * Hkv * budget entries (ties: earlier layer, head, token), per head."""
    entries = [(-value, layer, head, t) for layer, heads in enumerate(stats) for head, row in enumerate(heads)
               for t, value in enumerate(row)]
    total = len(stats) * len(stats[0]) * budget
    winners = [0] * len(stats)
    for _, layer, _, _ in sorted(entries)[:total]:
        winners[layer] += 1
    return winners


def test_exact_allocation_on_hand_made_scores():
    stats = [[[0.9, 0.1, 0.8, 0.7, INF]],  # layer 0: three high scores, one forced entry
             [[0.2, 0.3, 0.0, 0.1, INF]],  # layer 1: only its forced entry wins
             [[0.6, 0.5, 0.95, 0.05, INF]]]
    request = BudgetRequest(3, 1, 5, 3, 1, layer_statistics=torch.tensor(stats))
    assert _brute_force(stats, 3) == [4, 1, 4]
    assert GlobalTopKAllocator().allocate(request) == [4, 1, 4]


def test_heads_share_their_layers_winners_and_budgets_sum_exactly():
    # two heads: layer 0 wins 5 of the top 8 entries, layer 1 wins 3 -> 2.5 and 1.5 per head, rounded
    stats = [[[9.0, 8.0, 1.0], [7.0, 6.0, 5.0]], [[4.0, 0.5, 0.0], [3.0, 2.0, 0.2]]]
    request = BudgetRequest(2, 2, 3, 2, 0, layer_statistics=torch.tensor(stats))
    assert _brute_force(stats, 2) == [5, 3]
    budgets = GlobalTopKAllocator().allocate(request)
    assert budgets == [3, 1] and sum(budgets) == 2 * 2  # largest remainders, tie to the shallower layer
    # the ranking covers L * Hkv * budget entries (8 here), not L * budget: layer 1 wins half of them
    even = [[[9.0, 8.0, 0.0, 0.0], [7.0, 6.0, 0.0, 0.0]], [[5.0, 4.0, 0.0, 0.0], [3.0, 2.0, 0.0, 0.0]]]
    assert GlobalTopKAllocator().allocate(BudgetRequest(2, 2, 4, 2, 0, layer_statistics=torch.tensor(even))) == [2, 2]


def test_floor_holds_the_window_and_sinks():
    # layer 1 scores nothing above layer 0, but keeps its two forced entries (min_kept = 2)
    stats = [[[5.0, 6.0, 7.0, 8.0, INF, INF]], [[0.0, 0.0, 0.0, 0.0, INF, INF]]]
    request = BudgetRequest(2, 1, 6, 3, 2, layer_statistics=torch.tensor(stats))
    assert GlobalTopKAllocator().allocate(request) == [4, 2]


def test_statistic_normalises_forces_and_masks_padding():
    scores = torch.tensor([[[4.0, 1.0, 3.0, 2.0], [9.0, 5.0, 1.0, 0.0]]])  # (B=1, Hkv=2, T=4)
    forced = torch.zeros(1, 2, 4, dtype=torch.bool)
    forced[..., -1] = True
    valid = torch.tensor([[False, True, True, True]])
    raw = GlobalTopKAllocator().scores_statistic(scores, forced, valid)
    assert raw.tolist() == [[[-INF, 1.0, 3.0, INF], [-INF, 5.0, 1.0, INF]]]
    scaled = ranking_statistic(scores, forced, valid, "minmax")  # over entries 1, 2 of both heads: 1 .. 5
    assert scaled.tolist() == [[[-INF, 0.0, 0.5, INF], [-INF, 1.0, 0.0, INF]]]


def test_bad_statistics_and_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"layer_statistics of shape \(L, Hkv, T\)"):
        GlobalTopKAllocator().allocate(BudgetRequest(2, 1, 10, 4, 1, layer_statistics=torch.zeros(2)))
    with pytest.raises(ValueError, match="normalise must be one of"):
        GlobalTopKAllocator(normalise="zscore")


@pytest.mark.parametrize("scorer", ["snapkv_window", "knorm", "keydiff"])
def test_engine_budgets_follow_the_ranking_of_the_scorers_scores(scorer):
    """Through the engine, left-padded batch: each layer's kept count equals its winners (Hkv heads each)."""
    model = tiny_model("qwen3")
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (41, 29)])
    recipe = Recipe(allocator="global_topk", scorer=scorer, budget=12, window=2,
                    allocator_kwargs={"normalise": "minmax"})
    with recipe.apply(model, record_indices=True) as session:
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=0)
    keep = session.plan.keep  # (B, L)
    assert keep.sum(dim=1).tolist() == [12 * 4, 12 * 4]  # the total is conserved per row
    assert len(set(keep[0].tolist())) > 1  # and redistributed across layers
    for ordinal, idx in enumerate(sorted(session.selections)):
        counts = session.selections[idx].kept_counts  # (B, Hkv)
        assert counts.tolist() == [[int(keep[b, ordinal])] * 2 for b in range(2)]
