"""CURScorer against a loop-by-loop statement of kvpress's CURPress rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.scorer_views import DEVICES, make_view

from kvpress_lab.scorers.cur import CURScorer


def brute_cur(view, sinks, kind, window) -> np.ndarray:
    keys, values = view.keys.cpu().double().numpy(), view.values.cpu().double().numpy()
    valid = view.valid.cpu().numpy()
    out = np.zeros(keys.shape[:3])
    for b in range(keys.shape[0]):
        real = np.flatnonzero(valid[b])
        for h in range(keys.shape[1]):
            k2 = np.array([keys[b, h, t] @ keys[b, h, t] for t in real])
            v2 = np.array([values[b, h, t] @ values[b, h, t] for t in real])
            for x in (k2, v2):
                for s in range(0, len(real), window):
                    x[s : s + window] /= x[s : s + window].sum()
            score = {"key": k2, "value": v2, "kv_avg": (k2 + v2) / 2, "kv_product": k2 * v2}[kind]
            score = score / score.sum()
            score[:sinks] = 1.0
            out[b, h, real] = score
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["key", "value", "kv_avg", "kv_product"])
@pytest.mark.parametrize("pad", [None, [0, 5, 11]])
def test_equals_brute_force(pad, kind, device):
    view = make_view(batch=3, kv_heads=2, groups=1, length=23, pad=pad, device=device)
    scores = CURScorer(num_sinks=2, leverage_type=kind, local_window_size=5).score(view)
    assert scores.dtype == torch.float32 and scores.device == view.device
    valid = view.valid.cpu()[:, None, :].expand(-1, 2, -1).numpy()
    np.testing.assert_allclose(scores.cpu().numpy()[valid], brute_cur(view, 2, kind, 5)[valid], rtol=1e-5, atol=1e-7)


def test_sinks_forced():
    view = make_view(batch=2, length=10, pad=[0, 4])
    scorer = CURScorer()
    assert scorer.forced_keep(view)[1, 0].tolist() == [False] * 4 + [True] * 4 + [False] * 2
    assert scorer.minimum_budget(8) == 12
