"""ExpectedAttentionScorer against a loop-by-loop statement of its (post-RoPE) Gaussian rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.scorer_views import DEVICES, full_queries, make_view

from kvpress_lab.scorers.expected_attention import ExpectedAttentionScorer


def brute_ea(view, n_window, n_sink, cov, vnorm, eps) -> np.ndarray:
    q = full_queries(view).cpu().double().numpy()
    k, v = view.keys.cpu().double().numpy(), view.values.cpu().double().numpy()
    valid, s, length, groups = view.valid.cpu().numpy(), view.scaling, view.seq_len, view.num_groups
    out = np.zeros(k.shape[:3])
    for b in range(k.shape[0]):
        real = np.flatnonzero(valid[b])
        sinks, counted = real[:n_sink], real[n_sink:]
        window = [t for t in counted if n_window == 0 or t >= length - n_window]
        for h in range(view.num_kv_heads):
            for g in range(groups):
                qs = q[b, h * groups + g, window]
                mu = qs.mean(axis=0)
                sigma = (qs - mu).T @ (qs - mu) / len(window)
                logits = np.array([s * mu @ k[b, h, t] + (s**2 / 2 * k[b, h, t] @ sigma @ k[b, h, t] if cov else 0.0)
                                   for t in counted])
                p = np.exp(logits - logits.max())
                out[b, h, counted] += p / p.sum() / groups
            if vnorm:
                out[b, h, counted] = (out[b, h, counted] + eps) * np.linalg.norm(v[b, h, counted], axis=-1)
        out[b][:, sinks] = out[b].max() + 1.0
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("n_window", "cov", "vnorm", "eps"), [(6, True, True, 0.0), (0, True, False, 0.0),
                                                                 (512, False, True, 0.3)])
@pytest.mark.parametrize("pad", [None, [0, 3, 10]])
def test_equals_brute_force(pad, n_window, cov, vnorm, eps, device):
    view = make_view(batch=3, kv_heads=2, groups=2, length=19, pad=pad, device=device)
    scorer = ExpectedAttentionScorer(n_window=n_window, n_sink=2, use_covariance=cov, use_vnorm=vnorm, epsilon=eps)
    scores = scorer.score(view)
    assert scores.dtype == torch.float32 and scores.device == view.device
    valid = view.valid.cpu()[:, None, :].expand(-1, 2, -1).numpy()
    expected = brute_ea(view, n_window, 2, cov, vnorm, eps)
    np.testing.assert_allclose(scores.cpu().numpy()[valid], expected[valid], rtol=1e-4, atol=1e-6)


def test_sinks_forced_and_minimum_budget():
    scorer = ExpectedAttentionScorer()
    view = make_view(batch=2, length=10, pad=[0, 3])
    assert scorer.forced_keep(view)[1, 1].tolist() == [False] * 3 + [True] * 4 + [False] * 3
    assert scorer.minimum_budget(1) == 5
