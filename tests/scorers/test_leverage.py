"""LeverageScorer against the hat-matrix diagonal diag(K (K^T K)^-1 K^T), computed with numpy."""

from __future__ import annotations

import math

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
@pytest.mark.parametrize("which", ["pre_rope", "cached"])
def test_equals_brute_force(which, pad, centered, device):
    view = make_view(batch=3, kv_heads=2, groups=2, length=16, head_dim=4, pad=pad, device=device)
    keys = view.inputs.k if which == "pre_rope" else view.keys  # the default reads the keys before RoPE
    keys, valid = keys.cpu().double().numpy(), view.valid.cpu().numpy()
    raw = brute_leverage(keys, valid, centered)
    got = key_leverage(torch.as_tensor(keys, dtype=torch.float32, device=device), view.valid, centered=centered)
    np.testing.assert_allclose(got.cpu().numpy(), raw, rtol=1e-5, atol=1e-6)
    scores = LeverageScorer(centered=centered, keys=which).score(view)
    assert scores.dtype == torch.float32 and scores.device == view.device
    np.testing.assert_allclose(scores.cpu().numpy(), zscore_rows(raw, valid), rtol=1e-4, atol=1e-5)


def test_kvpress_flavour_equals_its_arithmetic_with_a_fixed_sketch():
    """kvpress's LeverageScorePress: centred pre-RoPE keys, X Phi (Gaussian / sqrt(k)), (X^T X + 1e-2 I)^-1, z-scored."""
    view = make_view(batch=1, kv_heads=2, groups=1, length=40, head_dim=8)
    scorer = LeverageScorer(sketch_dimension=6, seed=5, solver="cholesky")
    phi = (torch.randn(1, 2, 8, 6, generator=torch.Generator().manual_seed(5)) / math.sqrt(6))[0].double().numpy()
    keys = view.inputs.k[0].double().numpy()
    raw = []
    for h in range(2):
        x = (keys[h] - keys[h].mean(axis=0)) @ phi[h]
        raw.append(np.diag(x @ np.linalg.inv(x.T @ x + 1e-2 * np.eye(6)) @ x.T).clip(min=0))
    raw = np.array(raw)
    np.testing.assert_allclose(scorer.score(view)[0].numpy(), (raw - raw.mean()) / raw.std(ddof=1), rtol=1e-3, atol=1e-4)


def test_seed_none_draws_from_torch_global_generator_like_kvpress():
    view = make_view(length=16, head_dim=8)
    scorer = LeverageScorer(sketch_dimension=4, seed=None, solver="cholesky")
    torch.manual_seed(11)
    first = scorer.score(view)
    torch.manual_seed(11)
    assert torch.equal(first, scorer.score(view))
    assert not torch.equal(first, scorer.score(view))  # the global generator moved on


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
