"""SinkScorer (StreamingLLM): with the gather executor it keeps exactly the sinks and the latest tokens."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers.scorer_views import DEVICES, make_view

from kvpress_lab.executors.gather import select_top_k
from kvpress_lab.scorers.sink import SinkScorer


def test_scores_are_recency_and_forced_keep_marks_first_real_tokens():
    view = make_view(batch=2, kv_heads=2, length=8, pad=[3, 0])
    scorer = SinkScorer(num_sinks=2)
    assert scorer.score(view).tolist() == [[list(map(float, range(8)))] * 2] * 2
    forced = scorer.forced_keep(view)
    assert forced.shape == (2, 2, 8) and forced.dtype == torch.bool
    assert forced[0, 0].nonzero().flatten().tolist() == [3, 4]
    assert forced[1, 1].nonzero().flatten().tolist() == [0, 1]


def test_more_sinks_than_real_tokens_marks_only_real_tokens():
    view = make_view(batch=1, length=6, pad=[4])
    assert SinkScorer(num_sinks=4).forced_keep(view)[0, 0].nonzero().flatten().tolist() == [4, 5]
    assert not bool(SinkScorer(num_sinks=0).forced_keep(view).any())


CASES = [
    (length, pad, budget, sinks, window)
    for length, pad, budget, sinks, window in itertools.product([7, 16, 23], [0, 3], [5, 8, 12], [0, 1, 4], [1, 3])
    if budget >= sinks + window
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("length", "pad", "budget", "sinks", "window"), CASES)
def test_select_top_k_keeps_exactly_sinks_and_latest(length, pad, budget, sinks, window, device):
    view = make_view(batch=2, kv_heads=2, length=length, window=window, pad=[pad, 0], device=device)
    scorer = SinkScorer(num_sinks=sinks)
    positions = torch.arange(length, device=view.device)
    forced = scorer.forced_keep(view) | (positions >= length - view.window)  # sinks | last-W window
    real = view.valid.sum(dim=-1).cpu()  # (B,)
    keep = torch.minimum(real, torch.tensor(budget))[:, None].expand(-1, 2).contiguous()  # (B, Hkv) on CPU
    selection = select_top_k(scorer.score(view), keep, forced, view.valid)
    for row in range(2):
        first, n_real = length - int(real[row]), int(real[row])
        if n_real <= budget:
            expected = list(range(first, length))
        else:
            expected = list(range(first, first + sinks)) + list(range(length - (budget - sinks), length))
        for head in range(2):
            kept = selection.indices[row, head][selection.valid[row, head]].tolist()
            assert kept == expected, (row, head)


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (1.5, TypeError)])
def test_num_sinks_validation(value, error):
    with pytest.raises(error, match="SinkScorer.num_sinks must be an integer"):
        SinkScorer(num_sinks=value)
