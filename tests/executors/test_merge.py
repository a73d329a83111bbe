"""Merge-on-evict: an exact hand-made case, a brute-force restatement, padding and identity."""

from __future__ import annotations

import math

import pytest
import torch

from kvpress_lab import Recipe
from kvpress_lab.executors.merge import MergeExecutor, RaggedMergeExecutor, merge_evicted_values
from kvpress_lab.protocols import Selection


def _one_head_case():
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.0, -1.0]]]])  # (1, 1, 4, 2)
    values = torch.tensor([[[[2.0, 0.0], [0.0, 1.0], [0.0, 4.0], [9.0, 9.0]]]])
    scores = torch.tensor([[[3.0, 2.0, 1.0, 0.0]]])
    return keys, values, scores


@pytest.mark.parametrize("cls", [MergeExecutor, RaggedMergeExecutor])
def test_hand_made_case(cls):
    keys, values, scores = _one_head_case()
    executor = cls()
    selection = executor.select(scores, torch.tensor([[2]]), torch.zeros(1, 1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool))
    layer = executor.build_layer(keys, values, selection, 4)
    kept_keys, kept_values = layer.head_entries(0, 0)
    assert torch.equal(kept_keys, keys[0, 0, :2])  # keys never change
    # token 2 is closest to token 0 (cos 1/sqrt(1.01)); token 3's best similarity is 0 (token 0): weight 0
    s = 1 / math.sqrt(1.01)
    w = s * 4.0 / (4.0 + 2.0 + 1e-6)
    expected0 = [(2.0 + w * 0.0) / (1 + w), (0.0 + w * 4.0) / (1 + w)]
    torch.testing.assert_close(kept_values[0], torch.tensor(expected0), rtol=1e-6, atol=1e-6)
    assert torch.equal(kept_values[1], values[0, 0, 1])  # received nothing


def _brute_force(keys, values, kept, valid_tokens, threshold):
    """Per (row, head), Python loops over evicted tokens: the rule as stated in the docstring."""
    out = {}
    batch, heads, length, _ = keys.shape
    for b in range(batch):
        for h in range(heads):
            kept_list = kept[b][h]
            sums = {t: values[b, h, t].double().clone() for t in kept_list}
            weights = {t: 0.0 for t in kept_list}
            for e in range(length):
                if e in kept_list or not valid_tokens[b][e]:
                    continue
                sims = [float(torch.nn.functional.cosine_similarity(keys[b, h, e].double(), keys[b, h, t].double(), dim=0, eps=1e-6))
                        for t in kept_list]
                best = max(sims)
                target = kept_list[sims.index(best)]
                if best < threshold:
                    continue
                ve, vt = float(values[b, h, e].double().norm()), float(values[b, h, target].double().norm())
                w = max(best, 0.0) * ve / (ve + vt + 1e-6)
                sums[target] = sums[target] + w * values[b, h, e].double()
                weights[target] += w
            out[b, h] = torch.stack([sums[t] / (1 + weights[t]) if weights[t] > 0 else values[b, h, t].double() for t in kept_list])
    return out


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_random_padded_per_head_case_matches_the_brute_force(threshold):
    gen = torch.Generator().manual_seed(1)
    keys, values = torch.randn(2, 3, 11, 4, generator=gen), torch.randn(2, 3, 11, 4, generator=gen)
    candidates = torch.tensor([[True] * 11, [False] * 3 + [True] * 8])
    keep = torch.tensor([[5, 3, 4], [2, 4, 3]])
    executor = RaggedMergeExecutor(similarity_threshold=threshold)
    selection = executor.select(torch.rand(2, 3, 11, generator=gen), keep, torch.zeros(2, 3, 11, dtype=torch.bool), candidates)
    kept = [[selection.indices[b, h][selection.valid[b, h]].tolist() for h in range(3)] for b in range(2)]
    merged = merge_evicted_values(keys, values, selection, candidates, threshold)
    want = _brute_force(keys, values, kept, candidates.tolist(), threshold)
    layer = executor.build_layer(keys, values, selection, 11)
    for (b, h), expected in want.items():
        got = merged[b, h][selection.valid[b, h]]
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.head_entries(b, h)[1].double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(merged, torch.gather(values, 2, selection.indices[..., None].expand(-1, -1, -1, 4)))


def test_padding_is_never_merged():
    keys = torch.tensor([[[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]])  # padding's key equals the kept one's
    values = torch.tensor([[[[100.0, 100.0], [1.0, 0.0], [0.0, 0.0]]]])
    candidates = torch.tensor([[False, True, True]])
    selection = Selection(torch.tensor([[[1, 2]]]), torch.tensor([[[True, True]]]))
    merged = merge_evicted_values(keys, values, selection, candidates)
    assert torch.equal(merged, values[:, :, 1:])


def test_nothing_evicted_is_bit_identical_to_gather():
    gen = torch.Generator().manual_seed(0)
    keys, values = torch.randn(1, 2, 6, 4, generator=gen).half(), torch.randn(1, 2, 6, 4, generator=gen).half()
    executor = MergeExecutor()
    selection = executor.select(torch.rand(1, 2, 6), torch.tensor([[6, 6]]), torch.zeros(1, 2, 6, dtype=torch.bool),
                                torch.ones(1, 6, dtype=torch.bool))
    layer = executor.build_layer(keys, values, selection, 6)
    assert layer.values.dtype == torch.float16 and torch.equal(layer.values, values) and torch.equal(layer.keys, keys)


def test_options_and_recipes():
    with pytest.raises(ValueError, match="similarity_threshold must be a number >= -1.0 and <= 1.0, got 2.0"):
        MergeExecutor(similarity_threshold=2)
    with pytest.raises(ValueError, match="Use 'merge_ragged' for per-head budgets"):
        MergeExecutor().select(torch.rand(1, 2, 6), torch.tensor([[3, 2]]), torch.zeros(1, 2, 6, dtype=torch.bool),
                               torch.ones(1, 6, dtype=torch.bool))
    recipe = Recipe(executor="merge_ragged", head_allocation="adaptive", executor_kwargs={"similarity_threshold": 0.5})
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.preset("snapkv-merge").strategies.executor == MergeExecutor()
