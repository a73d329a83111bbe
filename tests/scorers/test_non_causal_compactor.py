"""NonCausalAttentionScorer and CompactorScorer against loop-by-loop restatements of their rules.

Two flavours of each are pinned: this project's (scaled softmax, exact ragged tail, exact
leverage) and kvpress 0.5.5's (``NonCausalAttnPress``: unscaled logits, the last chunk zero-padded
with padded query rows at logit 0 and padded keys at ``-1e-9``; ``LeverageScorePress``: sketched,
centred pre-RoPE keys solved with ``1e-2`` jitter; ``CompactorPress``: blending = ratio, ends at
the maximum).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.scorer_views import DEVICES, full_queries, make_view

from kvpress_lab import Recipe
from kvpress_lab.scorers.compactor import CompactorScorer
from kvpress_lab.scorers.non_causal import NonCausalAttentionScorer


def _z(rows):  # rows: (H, n)
    return (rows - rows.mean()) / max(rows.std(ddof=1), 1e-6) if rows.size else rows


def brute_non_causal(view, chunk, b, segment, kvpress=False) -> np.ndarray:
    """``(Hkv, len(segment))`` z-scored scores of one row's segment (absolute positions)."""
    q = full_queries(view).cpu().double().numpy()[b]
    k, v = view.keys.cpu().double().numpy()[b], view.values.cpu().double().numpy()[b]
    groups, n, scale = view.num_groups, len(segment), (1.0 if kvpress else view.scaling)
    raw = np.zeros((view.num_kv_heads, n))
    for h in range(view.num_kv_heads):
        for c in range(0, n, chunk):
            idx = list(segment[c : c + chunk])
            pad = chunk - len(idx) if kvpress else 0  # kvpress zero-pads the last chunk to `chunk` tokens
            for g in range(groups):
                for i in idx + [None] * pad:  # a padded query: logits 0 on real keys, -1e-9 on padded ones
                    logits = [0.0 if i is None else q[h * groups + g, i] @ k[h, j] * scale for j in idx] + [-1e-9] * pad
                    p = np.exp(np.array(logits) - max(logits))
                    raw[h, c : c + len(idx)] += (p / p.sum())[: len(idx)] / groups
        raw[h] *= np.linalg.norm(v[h, segment], axis=-1)
    padded = np.pad(raw, ((0, 0), (1, 1)))
    pooled = (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3
    return _z(pooled)


def brute_leverage(view, b, segment, sketch=None, jitter=0.0):
    """z-scored leverage of the row's pre-RoPE keys: exact, or kvpress's ``X Phi`` with ``+ jitter I``."""
    k = view.inputs.k.cpu().double().numpy()[b]  # (Hkv, T, D) pre-RoPE keys
    out = []
    for h in range(view.num_kv_heads):
        x = k[h, segment] - k[h, segment].mean(axis=0)
        if sketch is not None:
            x = x @ sketch[h]
            out.append(np.diag(x @ np.linalg.inv(x.T @ x + jitter * np.eye(x.shape[1])) @ x.T))
        else:
            out.append(np.diag(x @ np.linalg.pinv(x.T @ x) @ x.T))
    return _z(np.array(out))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [1, 4, 7, 40])
@pytest.mark.parametrize("pad", [None, [0, 3, 9]])
@pytest.mark.parametrize("kvpress", [False, True])
def test_non_causal_equals_brute_force(kvpress, chunk, pad, device):
    view = make_view(batch=3, kv_heads=2, groups=2, length=17, pad=pad, device=device)
    options = {"scaled": False, "tail": "kvpress"} if kvpress else {}
    scores = NonCausalAttentionScorer(chunk_size=chunk, **options).score(view).cpu().numpy()
    for b in range(3):
        real = np.flatnonzero(view.valid.cpu().numpy()[b])
        np.testing.assert_allclose(scores[b][:, real], brute_non_causal(view, chunk, b, real, kvpress), rtol=1e-4, atol=1e-5)


def test_the_kvpress_tail_differs_from_the_exact_one_on_a_ragged_chunk():
    view = make_view(batch=1, length=17)
    exact = NonCausalAttentionScorer(chunk_size=5, scaled=False).score(view)
    padded = NonCausalAttentionScorer(chunk_size=5, scaled=False, tail="kvpress").score(view)
    assert not torch.allclose(exact, padded)
    whole = make_view(batch=1, length=15)  # a multiple of the chunk: nothing padded, both the same
    torch.testing.assert_close(NonCausalAttentionScorer(chunk_size=5, scaled=False).score(whole),
                               NonCausalAttentionScorer(chunk_size=5, scaled=False, tail="kvpress").score(whole))


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


def test_compactor_kvpress_flavour_equals_kvpress_arithmetic_restated():
    """blending = the recipe's ratio, kvpress's sketch (fixed seed here), jitter 1e-2, unscaled padded tail, ends at max."""
    view = make_view(batch=1, kv_heads=2, groups=2, length=31, head_dim=8)
    scorer = Recipe.preset("compactor-kvpress", compression_ratio=0.4,
                           scorer_kwargs={"seed": 3, "sink_size_start": 3, "sink_size_end": 2, "chunk_size": 6,
                                          "sketch_dimension": 5}).strategies.scorer
    assert scorer.weight == 0.4
    scores = scorer.score(view).cpu().numpy()
    segment = np.arange(3, 29)
    sketch = (torch.randn(1, 2, 8, 5, generator=torch.Generator().manual_seed(3)) / math.sqrt(5))[0].double().numpy()
    blended = 0.4 * brute_leverage(view, 0, segment, sketch, jitter=1e-2) + brute_non_causal(view, 6, 0, segment, True)
    np.testing.assert_allclose(scores[0][:, segment], blended, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(scores[0][:, [0, 1, 2, 29, 30]], blended.max(), rtol=1e-5)


def test_compactor_on_a_prompt_shorter_than_its_sinks():
    view = make_view(batch=1, length=5)
    scores = CompactorScorer().score(view)
    assert bool(torch.isfinite(scores).all())
