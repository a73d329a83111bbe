"""ExpectedAttentionScorer against a loop-by-loop restatement of kvpress's ``ExpectedAttentionPress`` arithmetic.

The restatement (float64, numpy, one token and head at a time) follows kvpress 0.5.5's press:
pre-RoPE queries of the tokens after the sinks give ``mu`` and the biased ``Sigma``; the rotary
rotation of each of the next ``n`` positions is written out as 2x2 blocks and averaged;
``mu~ = R mu``, ``Sigma~ = R Sigma R^T``; logits ``mu~ . k / sqrt(D) + k^T Sigma~ k / 2D`` over the
cached keys after the sinks, softmax, mean over the query heads of a KV head, ``(p + eps) ||v||``,
sinks at ``max + 1``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.scorer_views import DEVICES, make_view

from kvpress_lab.scorers.expected_attention import ExpectedAttentionScorer


def rotation(position: int, dim: int, base: float = 10000.0) -> np.ndarray:
    """The RoPE rotation of ``position`` as a ``(D, D)`` matrix: pairs ``(i, i + D/2)`` turn by ``position * theta_i``."""
    half, out = dim // 2, np.zeros((dim, dim))
    for i in range(half):
        angle = position * base ** (-2 * i / dim)
        out[i, i], out[i, i + half] = np.cos(angle), -np.sin(angle)
        out[i + half, i], out[i + half, i + half] = np.sin(angle), np.cos(angle)
    return out


def brute_ea(view, n_future, n_sink, cov, vnorm, eps) -> np.ndarray:
    k, v = view.keys.cpu().double().numpy(), view.values.cpu().double().numpy()
    raw_q = view.inputs.q.cpu().double().numpy()  # (B, Hq, T, D) pre-RoPE queries
    valid, groups, dim = view.valid.cpu().numpy(), view.num_groups, view.head_dim
    out = np.zeros(k.shape[:3])
    for b in range(k.shape[0]):
        real = np.flatnonzero(valid[b])
        sinks, counted = real[:n_sink], real[n_sink:]
        rot = np.mean([rotation(p, dim) for p in range(len(real), len(real) + n_future)], axis=0)  # next positions
        for h in range(view.num_kv_heads):
            for g in range(groups):
                qs = raw_q[b, h * groups + g, counted]
                mu = qs.mean(axis=0)
                sigma = (qs - mu).T @ (qs - mu) / len(counted)
                mu, sigma = rot @ mu, rot @ sigma @ rot.T
                logits = np.array([mu @ k[b, h, t] / np.sqrt(dim) + (k[b, h, t] @ sigma @ k[b, h, t] / dim / 2 if cov else 0.0)
                                   for t in counted])
                p = np.exp(logits - logits.max())
                out[b, h, counted] += p / p.sum() / groups
            if vnorm:
                out[b, h, counted] = (out[b, h, counted] + eps) * np.linalg.norm(v[b, h, counted], axis=-1)
        out[b][:, sinks] = out[b].max() + 1.0
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("n_future", "cov", "vnorm", "eps"), [(6, True, True, 0.0), (1, True, False, 0.0),
                                                                 (512, False, True, 0.3)])
@pytest.mark.parametrize("pad", [None, [0, 3, 10]])
def test_equals_kvpress_arithmetic_restated(pad, n_future, cov, vnorm, eps, device):
    view = make_view(batch=3, kv_heads=2, groups=2, length=19, pad=pad, device=device)
    scorer = ExpectedAttentionScorer(n_future_positions=n_future, num_sinks=2, use_covariance=cov, use_vnorm=vnorm, epsilon=eps)
    scores = scorer.score(view)
    assert scores.dtype == torch.float32 and scores.device == view.device
    valid = view.valid.cpu()[:, None, :].expand(-1, 2, -1).numpy()
    expected = brute_ea(view, n_future, 2, cov, vnorm, eps)
    np.testing.assert_allclose(scores.cpu().numpy()[valid], expected[valid], rtol=1e-4, atol=1e-6)


def test_the_future_rotation_matters():
    """The scores change with the averaging span: the rotation is applied, not skipped."""
    view = make_view(batch=1, length=19)
    near, far = (ExpectedAttentionScorer(n_future_positions=n, num_sinks=2).score(view) for n in (1, 64))
    assert not torch.allclose(near, far)


def test_sinks_forced_and_minimum_budget():
    scorer = ExpectedAttentionScorer()
    view = make_view(batch=2, length=10, pad=[0, 3])
    assert scorer.forced_keep(view)[1, 1].tolist() == [False] * 3 + [True] * 4 + [False] * 3
    assert scorer.minimum_budget(1) == 5
