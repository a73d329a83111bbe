"""KeyDiffScorer against a loop-by-loop statement of its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.scorer_views import DEVICES, make_view

from kvpress_lab.scorers.keydiff import KeyDiffScorer


def brute_keydiff(view) -> np.ndarray:
    keys, valid = view.keys.cpu().double().numpy(), view.valid.cpu().numpy()
    out = np.zeros(keys.shape[:3])
    for b in range(keys.shape[0]):
        real = np.flatnonzero(valid[b])
        for h in range(keys.shape[1]):
            anchor = np.mean([keys[b, h, t] / np.linalg.norm(keys[b, h, t]) for t in real], axis=0)
            for t in real:
                k = keys[b, h, t]
                out[b, h, t] = -(k @ anchor) / (np.linalg.norm(k) * np.linalg.norm(anchor))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad", [None, [3, 0, 9]])
def test_equals_brute_force(pad, device):
    view = make_view(batch=3, kv_heads=2, groups=2, length=12, pad=pad, device=device)
    scores = KeyDiffScorer().score(view)
    assert scores.dtype == torch.float32 and scores.device == view.device
    valid = view.valid.cpu()[:, None, :].expand(-1, 2, -1)
    np.testing.assert_allclose(scores.cpu()[valid].numpy(), brute_keydiff(view)[valid.numpy()], rtol=1e-5, atol=1e-6)


def test_the_outlier_key_scores_highest():
    keys = torch.tensor([[[[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [-0.2, 1.0]]]])
    view = make_view(batch=1, kv_heads=1, groups=1, length=4, head_dim=2)
    view = type(view)(0, keys, keys, view.valid, 1, 1.0, 1, view.query_fn)
    assert int(KeyDiffScorer().score(view)[0, 0].argmax()) == 3
