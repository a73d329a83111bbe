"""Left padding and batch neighbours never change the query-agnostic scorers' scores of a row.

A row with ``p`` tokens of random left padding, batched with an unrelated row, must score its
real tokens exactly like the same row alone (no padding, batch of one).
"""

from __future__ import annotations

import pytest
import torch
from helpers.scorer_views import DEVICES, rope_view

from kvpress_lab.scorers.compactor import CompactorScorer
from kvpress_lab.scorers.cur import CURScorer
from kvpress_lab.scorers.expected_attention import ExpectedAttentionScorer
from kvpress_lab.scorers.keydiff import KeyDiffScorer
from kvpress_lab.scorers.lagkv import LagKVScorer
from kvpress_lab.scorers.leverage import LeverageScorer
from kvpress_lab.scorers.non_causal import NonCausalAttentionScorer

SCORERS = {
    "keydiff": KeyDiffScorer(),
    "lagkv": LagKVScorer(num_sinks=2, lag_size=4),
    "lagkv-cross": LagKVScorer(num_sinks=2, lag_size=4, cross_scoring=True),
    "lagkv-short": LagKVScorer(),
    "leverage": LeverageScorer(),
    "leverage-sketch": LeverageScorer(sketch_dimension=3, centered=False),
    "non_causal": NonCausalAttentionScorer(chunk_size=5),
    "compactor": CompactorScorer(chunk_size=5, sink_size_start=3, sink_size_end=2),
    "cur": CURScorer(local_window_size=4),
    "cur-random": CURScorer(use_random_leverage=True, leverage_type="kv_avg"),
    "expected_attention": ExpectedAttentionScorer(n_future_positions=7, num_sinks=2),
    "expected_attention-mean": ExpectedAttentionScorer(use_covariance=False, epsilon=0.1),
}


def _view(keys, values, queries, valid, kv_heads, groups):
    return rope_view(keys, values, queries, valid, window=2)  # keys and queries given pre-RoPE


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad", [1, 6])
@pytest.mark.parametrize("name", sorted(SCORERS))
def test_padded_row_scores_like_the_row_alone(name, pad, device):
    gen = torch.Generator().manual_seed(pad)
    kv_heads, groups, length, dim = 2, 2, 23, 4
    total = length + pad

    def rand(heads, n):
        return torch.randn(2, heads, n, dim, generator=gen).to(device)

    keys, values, queries = rand(kv_heads, total), rand(kv_heads, total), rand(kv_heads * groups, total)
    valid = torch.ones(2, total, dtype=torch.bool)
    valid[0, :pad] = False  # row 0 padded, row 1 an unrelated full row
    batched = _view(keys, values, queries, valid.to(device), kv_heads, groups)
    alone = _view(keys[:1, :, pad:], values[:1, :, pad:], queries[:1, :, pad:],
                  torch.ones(1, length, dtype=torch.bool, device=device), kv_heads, groups)
    scorer = SCORERS[name]
    torch.testing.assert_close(scorer.score(batched)[:1, :, pad:], scorer.score(alone), rtol=1e-5, atol=1e-5)
    forced = getattr(scorer, "forced_keep", None)
    if forced is not None:
        assert torch.equal(forced(batched)[:1, :, pad:], forced(alone))
        assert not bool(forced(batched)[0, :, :pad].any())
