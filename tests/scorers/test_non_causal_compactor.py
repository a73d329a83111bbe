"""NonCausalAttentionScorer and CompactorScorer against loop-by-loop statements of their rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.scorer_views import DEVICES, full_queries, make_view

from kvpress_lab.scorers.compactor import CompactorScorer
from kvpress_lab.scorers.non_causal import NonCausalAttentionScorer


def _z(rows):  # rows: (H, n)
    return (rows - rows.mean()) / max(rows.std(ddof=1), 1e-6) if rows.size else rows


def brute_non_causal(view, chunk, b, segment) -> np.ndarray:
    """``(Hkv, len(segment))`` z-scored scores of one row's segment (absolute positions)."""
    q = full_queries(view).cpu().double().numpy()[b]
    k, v = view.keys.cpu().double().numpy()[b], view.values.cpu().double().numpy()[b]
    groups, n = view.num_groups, len(segment)
    raw = np.zeros((view.num_kv_heads, n))
    for h in range(view.num_kv_heads):
        for c in range(0, n, chunk):
            idx = segment[c : c + chunk]
            for g in range(groups):
                for i in idx:
                    logits = np.array([q[h * groups + g, i] @ k[h, j] * view.scaling for j in idx])
                    p = np.exp(logits - logits.max())
                    raw[h, c : c + len(idx)] += p / p.sum() / groups
        raw[h] *= np.linalg.norm(v[h, segment], axis=-1)
    padded = np.pad(raw, ((0, 0), (1, 1)))
    pooled = (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3
    return _z(pooled)


def brute_leverage(view, b, segment):
    k = view.keys.cpu().double().numpy()[b]
    out = []
    for h in range(view.num_kv_heads):
        x = k[h, segment] - k[h, segment].mean(axis=0)
        out.append(np.diag(x @ np.linalg.pinv(x.T @ x) @ x.T))
    return _z(np.array(out))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [1, 4, 7, 40])
@pytest.mark.parametrize("pad", [None, [0, 3, 9]])
def test_non_causal_equals_brute_force(chunk, pad, device):
    view = make_view(batch=3, kv_heads=2, groups=2, length=17, pad=pad, device=device)
    scores = NonCausalAttentionScorer(chunk_size=chunk).score(view).cpu().numpy()
    for b in range(3):
        real = np.flatnonzero(view.valid.cpu().numpy()[b])
        np.testing.assert_allclose(scores[b][:, real], brute_non_causal(view, chunk, b, real), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad", [None, [0, 3, 9]])
def test_compactor_equals_brute_force(pad, device):
    view = make_view(batch=3, kv_heads=2, groups=2, length=26, head_dim=4, pad=pad, device=device)
    scorer = CompactorScorer(blending=0.5, sink_size_start=3, sink_size_end=2, chunk_size=6)
    scores = scorer.score(view).cpu().numpy()
    for b in range(3):
        real = np.flatnonzero(view.valid.cpu().numpy()[b])
        segment = real[3:-2]
        blended = 0.5 * brute_leverage(view, b, segment) + brute_non_causal(view, 6, b, segment)
        np.testing.assert_allclose(scores[b][:, segment], blended, rtol=1e-4, atol=1e-4)
        protected = np.concatenate([real[:3], real[-2:]])
        np.testing.assert_allclose(scores[b][:, protected], blended.max() + 1.0, rtol=1e-5)


def test_compactor_on_a_prompt_shorter_than_its_sinks():
    view = make_view(batch=1, length=5)
    scores = CompactorScorer().score(view)
    assert bool(torch.isfinite(scores).all())
