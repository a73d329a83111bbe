"""LagKVScorer against a loop-by-loop statement of the LagKV rule (kvpress LagKVPress)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.scorer_views import DEVICES, make_view

from kvpress_lab.scorers.lagkv import LagKVScorer


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def brute_lagkv(view, sink, lag, cross) -> np.ndarray:
    keys, values = view.keys.cpu().double().numpy(), view.values.cpu().double().numpy()
    valid = view.valid.cpu().numpy()
    out = np.zeros(keys.shape[:3])
    for b in range(keys.shape[0]):
        real = np.flatnonzero(valid[b])
        n = len(real)
        for h in range(keys.shape[1]):
            row = np.ones(n)
            if n < sink + 2 * lag:
                for r in range(sink, n):
                    row[r] = (r - sink) / (n - sink)
            else:
                parts = (n - sink) // lag
                for p in range(parts - 1):
                    span = [real[sink + p * lag + i] for i in range(lag)]
                    ref = [real[sink + (p + 1) * lag + i] for i in range(lag)]
                    total = np.zeros(lag)
                    for states in (keys, values):
                        lo = states[b, h, ref].min(axis=0)
                        hi = states[b, h, ref].max(axis=0)
                        spread = [np.std((states[b, h, t] - lo) / (hi - lo), ddof=1) for t in span]
                        total += _softmax(np.array(spread)) / 2
                    if not cross:
                        total = np.array([sum(total[j] < total[i] for j in range(lag)) for i in range(lag)]) / lag
                    row[sink + p * lag : sink + (p + 1) * lag] = total
            out[b, h, real] = row
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize(("length", "pad"), [(25, [0, 3, 12]), (30, None), (9, [0, 2, 4])])
def test_equals_brute_force(length, pad, cross, device):
    view = make_view(batch=3, kv_heads=2, groups=1, length=length, pad=pad, device=device)
    scorer = LagKVScorer(num_sinks=2, lag_size=4, cross_scoring=cross)
    scores = scorer.score(view)
    assert scores.dtype == torch.float32 and scores.device == view.device
    valid = view.valid.cpu()[:, None, :].expand(-1, 2, -1).numpy()
    expected = brute_lagkv(view, 2, 4, cross)
    np.testing.assert_allclose(scores.cpu().numpy()[valid], expected[valid], rtol=1e-5, atol=1e-6)


def test_sinks_are_forced_and_counted_in_the_minimum_budget():
    view = make_view(batch=2, length=12, pad=[0, 5])
    forced = LagKVScorer(num_sinks=3).forced_keep(view)
    assert forced[0, 0].tolist() == [True] * 3 + [False] * 9
    assert forced[1, 0].tolist() == [False] * 5 + [True] * 3 + [False] * 4
    assert LagKVScorer(num_sinks=3).minimum_budget(8) == 11


@pytest.mark.parametrize(("field", "value", "error"), [("lag_size", 0, ValueError), ("num_sinks", -1, ValueError),
                                                       ("cross_scoring", 1, TypeError)])
def test_validation(field, value, error):
    with pytest.raises(error, match=f"LagKVScorer.{field}"):
        LagKVScorer(**{field: value})
