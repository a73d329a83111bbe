"""The cheap baselines: knorm, tova and random, checked by hand."""

from __future__ import annotations

import pytest
import torch
from helpers.scorer_views import DEVICES, brute_force_attention, make_view

from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers.knorm import KNormScorer
from kvpress_lab.scorers.random_scorer import RandomScorer
from kvpress_lab.scorers.tova import TOVAScorer


def tiny_view(keys: torch.Tensor, queries: torch.Tensor, valid: torch.Tensor | None = None) -> LayerView:
    batch, _, length, dim = keys.shape
    valid = torch.ones(batch, length, dtype=torch.bool) if valid is None else valid
    return LayerView(0, keys, keys, valid, window=1, scaling=1.0, num_query_heads=queries.shape[1],
                     query_fn=lambda a, b: queries[:, :, a:b])


def test_knorm_is_minus_the_key_norm():
    keys = torch.tensor([[[[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [6.0, 8.0], [-1.0, 0.0]]]])  # (1, 2, 3, 2)
    view = tiny_view(keys, torch.zeros(1, 4, 3, 2))
    assert KNormScorer().score(view).tolist() == [[[-5.0, 0.0, -1.0], [-2.0, -10.0, -1.0]]]
    assert KNormScorer().score(tiny_view(keys.half(), torch.zeros(1, 4, 3, 2))).dtype == torch.float32


def test_tova_hand_values():
    keys = torch.tensor([[[[0.0], [1.0], [2.0]]]])  # (1, 1, 3, 1)
    queries = torch.tensor([[[[9.0], [9.0], [0.0]], [[9.0], [9.0], [1.0]]]])  # (1, 2, 3, 1); last query 0 and 1
    valid = torch.tensor([[False, True, True]])
    scores = TOVAScorer().score(tiny_view(keys, queries, valid))
    e = torch.e
    head0 = [0.0, 0.5, 0.5]  # a zero query attends uniformly to the 2 real tokens
    head1 = [0.0, e / (e + e**2), e**2 / (e + e**2)]  # logits 1 and 2 over the real tokens
    expected = torch.tensor([[[(a + b) / 2 for a, b in zip(head0, head1)]]])  # mean over the group
    torch.testing.assert_close(scores, expected)


def test_tova_equals_last_row_of_brute_force():
    view = make_view(batch=2, kv_heads=2, groups=3, length=10, pad=[4, 0])
    last = brute_force_attention(view)[:, :, -1]  # (B, Hq, T)
    expected = last.reshape(2, 2, 3, 10).mean(dim=2).float()
    torch.testing.assert_close(TOVAScorer().score(view), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_random_is_reproducible_and_seed_and_layer_sensitive(device):
    view = make_view(batch=2, kv_heads=2, length=17, device=device)
    scores = RandomScorer(seed=3).score(view)
    assert scores.shape == (2, 2, 17) and scores.dtype == torch.float32 and scores.device == view.device
    assert bool(((scores >= 0) & (scores < 1)).all())
    assert torch.equal(scores, RandomScorer(seed=3).score(view))  # same seed, same layer
    assert torch.equal(scores, RandomScorer(seed=3).score(make_view(batch=2, kv_heads=2, length=17, seed=9, device=device)))
    assert not torch.equal(scores, RandomScorer(seed=4).score(view))
    assert not torch.equal(scores, RandomScorer(seed=3).score(make_view(batch=2, kv_heads=2, length=17, layer_idx=1, device=device)))


def test_random_does_not_touch_the_global_generator():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    RandomScorer().score(make_view())
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), ("0", TypeError)])
def test_random_seed_validation(value, error):
    with pytest.raises(error, match="RandomScorer.seed must be an integer"):
        RandomScorer(seed=value)
