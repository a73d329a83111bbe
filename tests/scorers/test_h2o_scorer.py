"""H2OScorer: chunked accumulation equals brute-force full attention, without a T x T matrix."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.scorer_views import DEVICES, brute_force_attention, make_view

from kvpress_lab.scorers.h2o import H2OScorer

LENGTH = 13  # prime, so most chunk sizes leave a ragged last block


def expected_h2o(view) -> torch.Tensor:
    received = brute_force_attention(view).sum(dim=2)  # (B, Hq, T): summed over queries
    batch, _, length = received.shape
    return received.reshape(batch, view.num_kv_heads, view.num_groups, length).mean(dim=2).float()  # (B, Hkv, T)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad", [None, [4, 0, 12]], ids=["no-pad", "left-pad"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, LENGTH, 2 * LENGTH])
def test_equals_brute_force(chunk_size, pad, device):
    view = make_view(batch=3, kv_heads=2, groups=3, length=LENGTH, pad=pad, device=device)
    scores = H2OScorer(chunk_size=chunk_size).score(view)
    assert scores.shape == (3, 2, LENGTH) and scores.dtype == torch.float32 and scores.device == view.device
    torch.testing.assert_close(scores.cpu(), expected_h2o(view), rtol=1e-5, atol=1e-5)
    if pad is not None:
        assert bool((scores.cpu()[~view.valid.cpu()[:, None, :].expand_as(scores)] == 0).all())  # padding gets nothing


def test_queries_are_requested_in_blocks_covering_the_prompt_once():
    view = make_view(length=LENGTH)
    spans = []

    def spy(start, stop):
        spans.append((start, stop))
        return view.query_fn(start, stop)

    H2OScorer(chunk_size=5).score(dataclasses.replace(view, query_fn=spy))
    assert spans == [(0, 5), (5, 10), (10, 13)]


def test_each_query_distributes_one_unit_of_attention():
    view = make_view(batch=2, kv_heads=1, groups=2, length=9, pad=[3, 0])
    scores = H2OScorer(chunk_size=4).score(view)  # (B, 1, T)
    torch.testing.assert_close(scores.sum(dim=-1), view.valid.sum(dim=-1, keepdim=True).float())


def test_half_precision_inputs_give_float32_scores():
    view = make_view(length=LENGTH, dtype=torch.bfloat16)
    scores = H2OScorer(chunk_size=4).score(view)
    assert scores.dtype == torch.float32 and bool(torch.isfinite(scores).all())


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_chunk_size_validation(value, error):
    with pytest.raises(error, match="H2OScorer.chunk_size must be an integer"):
        H2OScorer(chunk_size=value)


@pytest.mark.parametrize("pad", [None, [4, 0, 12]], ids=["no-pad", "left-pad"])
@pytest.mark.parametrize("query_start", [0, 5, LENGTH - 1])
def test_score_chunk_is_the_attention_of_the_later_queries_only(query_start, pad):
    """What a chunked prefill adds per chunk: the brute-force sum over queries query_start:T alone."""
    view = make_view(batch=3, kv_heads=2, groups=3, length=LENGTH, pad=pad)
    received = brute_force_attention(view)[:, :, query_start:].sum(dim=2)  # (B, Hq, T)
    want = received.reshape(3, 2, 3, LENGTH).mean(dim=2).float()
    torch.testing.assert_close(H2OScorer(chunk_size=4).score_chunk(view, query_start), want, rtol=1e-5, atol=1e-5)


def test_blocks_only_compute_the_keys_their_queries_see(monkeypatch):
    """Causal blocks: a block's logits stop at its last query, so no block is T wide but the last."""
    view = make_view(length=LENGTH)
    widths = []
    real_matmul = torch.matmul

    def spy(a, b, **kwargs):
        widths.append(b.shape[-1])
        return real_matmul(a, b, **kwargs)

    monkeypatch.setattr(torch, "matmul", spy)
    H2OScorer(chunk_size=5).score(view)
    assert widths == [5, 10, 13]
