"""LeverageScorer against the hat-matrix diagonal diag(K (K^T K)^-1 K^T), computed with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.scorer_views import DEVICES, make_view

from kvpress_lab.scorers.leverage import LeverageScorer, key_leverage


def brute_leverage(keys, valid, centered) -> np.ndarray:
    """``(B, H, T)`` leverages of the real rows, 0 on padding."""
    out = np.zeros(keys.shape[:3])
    for b in range(keys.shape[0]):
        real = np.flatnonzero(valid[b])
        for h in range(keys.shape[1]):
            x = keys[b, h, real]
            if centered:
                x = x - x.mean(axis=0)
            hat = x @ np.linalg.inv(x.T @ x) @ x.T
            out[b, h, real] = np.diag(hat)
    return out


def zscore_rows(scores, valid) -> np.ndarray:
    out = np.zeros_like(scores)
    for b in range(scores.shape[0]):
        real = np.flatnonzero(valid[b])
        vals = scores[b][:, real]
        out[b][:, real] = (vals - vals.mean()) / max(vals.std(ddof=1), 1e-6)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("pad", [None, [0, 4, 7]])
def test_equals_brute_force(pad, centered, device):
    view = make_view(batch=3, kv_heads=2, groups=2, length=16, head_dim=4, pad=pad, device=device)
    keys, valid = view.keys.cpu().double().numpy(), view.valid.cpu().numpy()
    raw = brute_leverage(keys, valid, centered)
    got = key_leverage(view.keys, view.valid, centered=centered)
    np.testing.assert_allclose(got.cpu().numpy(), raw, rtol=1e-5, atol=1e-6)
    scores = LeverageScorer(centered=centered).score(view)
    assert scores.dtype == torch.float32 and scores.device == view.device
    np.testing.assert_allclose(scores.cpu().numpy(), zscore_rows(raw, valid), rtol=1e-4, atol=1e-5)


def test_leverages_sum_to_the_rank_and_flag_the_outlier():
    keys = torch.randn(1, 1, 20, 4, generator=torch.Generator().manual_seed(1)) * 0.1
    keys[0, 0, 7] = torch.tensor([5.0, -5.0, 5.0, 5.0])
    valid = torch.ones(1, 20, dtype=torch.bool)
    lev = key_leverage(keys, valid, centered=False)
    assert abs(float(lev.sum()) - 4.0) < 1e-4 and int(lev.argmax()) == 7


def test_fewer_tokens_than_dimensions_stays_finite():
    view = make_view(batch=1, kv_heads=1, groups=1, length=3, head_dim=8)
    lev = key_leverage(view.keys, view.valid, centered=True)  # rank 2 after centring
    assert bool(torch.isfinite(lev).all()) and abs(float(lev.sum()) - 2.0) < 1e-4


def test_sketch_is_seeded():
    view = make_view(length=16, head_dim=8)
    assert torch.equal(LeverageScorer(sketch_dimension=4).score(view), LeverageScorer(sketch_dimension=4).score(view))
    assert not torch.equal(LeverageScorer(sketch_dimension=4).score(view), LeverageScorer(sketch_dimension=4, seed=1).score(view))
