"""ChunkKV selection: exact kept sets on hand-made scores, and agreement with the rule restated in words."""

from __future__ import annotations

import random

import pytest
import torch

from kvpress_lab import Recipe
from kvpress_lab.executors.chunk import ChunkExecutor

#: One row, one head, T = 12, C = 4: chunk means 1.0, 1.25, 0.75 (chunk 1 first, then chunk 0, then chunk 2).
SCORES = torch.tensor([[[1.0, 1, 1, 1, 5, 0, 0, 0, 0, 0, 0, 3]]])
WINDOW = torch.zeros(1, 1, 12, dtype=torch.bool)
WINDOW[..., -1] = True
ALL = torch.ones(1, 12, dtype=torch.bool)


def _kept(executor, scores, keep, forced, candidates):
    selection = executor.select(scores, torch.tensor(keep), forced, candidates)
    return [selection.indices[b, h][selection.valid[b, h]].tolist() for b in range(scores.shape[0]) for h in range(scores.shape[1])]


@pytest.mark.parametrize("keep, expected", [
    (6, [0, 4, 5, 6, 7, 11]),  # forced 11; chunk 1 (4 entries) fits in 5, chunk 0 does not: 1 slot to the best token, 0
    (10, [0, 1, 2, 3, 4, 5, 6, 7, 8, 11]),  # chunks 1 and 0 fit in 9; chunk 2 needs 3 more than the 1 left: token 8
    (12, list(range(12))),
    (3, [0, 4, 11]),  # no chunk fits in 2: plain top-k (kvpress delegates to the scorer below one chunk)
])
def test_whole_chunks_then_the_best_entries(keep, expected):
    assert _kept(ChunkExecutor(chunk_length=4), SCORES, [[keep]], WINDOW, ALL) == [expected]


def test_plain_top_k_would_keep_another_set():
    from kvpress_lab.executors import select_top_k

    selection = select_top_k(SCORES, torch.tensor([[6]]), WINDOW, ALL)
    assert selection.indices[0, 0].tolist() == [0, 1, 2, 3, 4, 11]  # what ChunkKV must not keep


def test_without_forced_entries_and_multiples_of_c_it_keeps_kvpress_chunks():
    none = torch.zeros(1, 1, 12, dtype=torch.bool)
    # kvpress: int(ceil(12 / 4) * (1 - 1/3)) = 2 chunks, the best two by mean: chunks 1 and 0
    assert _kept(ChunkExecutor(chunk_length=4), SCORES, [[8]], none, ALL) == [list(range(8))]


def test_chunks_are_counted_from_each_rows_first_real_token_and_ranked_on_head_sums():
    # row 0 unpadded, row 1 left-padded by 2: its chunks are real tokens 0-3 / 4-7 (slots 2-5 / 6-9)
    scores = torch.tensor([
        [[0, 0, 0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]],
        [[9, 9, 0, 0, 0, 0, 2, 2, 2, 0], [9, 9, 0, 0, 0, 0, 0, 0, 0, 4]],  # head sums: chunk at slots 6-9 wins
    ], dtype=torch.float32)
    candidates = torch.tensor([[True] * 10, [False, False] + [True] * 8])
    forced = torch.zeros(2, 2, 10, dtype=torch.bool)
    kept = _kept(ChunkExecutor(chunk_length=4), scores, [[4, 4], [4, 4]], forced, candidates)
    assert kept == [[4, 5, 6, 7], [4, 5, 6, 7], [6, 7, 8, 9], [6, 7, 8, 9]]  # padding (scored 9) never kept


def _brute_force(scores, keep, forced, candidates, chunk_length):
    """The rule in words, one (row, head) at a time, with Python lists."""
    out = []
    for b in range(scores.shape[0]):
        real = [t for t in range(scores.shape[2]) if candidates[b, t]]
        chunks = [real[i:i + chunk_length] for i in range(0, len(real), chunk_length)]
        means = [sum(float(scores[b, :, t].sum()) for t in c) / len(c) for c in chunks]
        ranking = sorted(range(len(chunks)), key=lambda c: (-means[c], c))
        for h in range(scores.shape[1]):
            kept = {t for t in real if forced[b, h, t]}
            for c in ranking:
                fresh = [t for t in chunks[c] if t not in kept]
                if len(kept) + len(fresh) > keep[b][h]:
                    break
                kept |= set(fresh)
            rest = sorted((t for t in real if t not in kept), key=lambda t: (-float(scores[b, h, t]), t))
            kept |= set(rest[: keep[b][h] - len(kept)])
            out.append(sorted(kept))
    return out


@pytest.mark.parametrize("seed", range(25))
def test_random_cases_match_the_rule_restated(seed):
    rng = random.Random(seed)
    batch, heads, length, chunk_length = rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 30), rng.randint(1, 7)
    scores = torch.randint(0, 5, (batch, heads, length), generator=torch.Generator().manual_seed(seed)).float()  # many ties
    pads = [rng.randint(0, length - 1) for _ in range(batch)]
    candidates = torch.arange(length)[None, :] >= torch.tensor(pads)[:, None]
    window = rng.randint(0, 3)
    forced = (torch.arange(length) >= length - window).expand(batch, heads, -1) & candidates[:, None, :]
    keep = []
    for b in range(batch):
        real = length - pads[b]
        k = rng.randint(min(real, max(1, int(forced[b, 0].sum()))), real)
        keep.append([k] * heads)
    got = _kept(ChunkExecutor(chunk_length=chunk_length), scores, keep, forced, candidates)
    assert got == _brute_force(scores, keep, forced, candidates, chunk_length)


def test_per_head_budgets_and_bad_lengths_are_clear_errors():
    with pytest.raises(ValueError, match="'chunk' executor keeps the same number of entries in every KV head"):
        ChunkExecutor().select(torch.rand(1, 2, 6), torch.tensor([[3, 2]]), torch.zeros(1, 2, 6, dtype=torch.bool),
                               torch.ones(1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="ChunkExecutor.chunk_length must be an integer >= 1, got 0"):
        ChunkExecutor(chunk_length=0)
    with pytest.raises(ValueError, match="adaptive"):
        Recipe(executor="chunk", head_allocation="adaptive")
    assert Recipe.preset("chunkkv").strategies.executor == ChunkExecutor(chunk_length=20)
