"""The ``*-kvpress`` presets' scorers and selection rules against literal restatements of kvpress 0.5.5.

Each ``kvpress_*`` function below transcribes a press of NVIDIA kvpress 0.5.5 (its ``score`` or
``compress``, line by line, torch operations in kvpress's order) on hand-made tensors, so the
production code is checked against an independent statement of the reference's arithmetic.
Where the reference breaks ties with ``torch.topk``, so do the transcriptions.
(``tests/scorers/test_expected_attention.py``, ``test_leverage.py`` and ``test_non_causal_compactor.py``
hold the restatements of ExpectedAttention, LeverageScore, NonCausalAttn and Compactor;
``test_kvpress_fidelity.py`` the budget counts.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.scorer_views import full_queries, make_view
from helpers.tiny_models import random_prompt, tiny_model

from kvpress_lab import BudgetRequest, Recipe
from kvpress_lab.executors.chunk import ChunkExecutor
from kvpress_lab.executors.gather import GatherExecutor, select_top_k
from kvpress_lab.head_allocation import adaptive_head_budgets
from kvpress_lab.engine.block_scoring import select_in_blocks
from kvpress_lab.scorers.h2o import H2OScorer
from kvpress_lab.scorers.keydiff import KeyDiffScorer
from kvpress_lab.scorers.lagkv import LagKVScorer
from kvpress_lab.scorers.random_scorer import RandomScorer
from kvpress_lab.scorers.snapkv_window import SnapKVWindowScorer
from kvpress_lab.scorers.tova import TOVAScorer
from kvpress_lab.allocators.global_topk import GlobalTopKAllocator


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x[:, :, None].expand(-1, -1, groups, -1, -1).reshape(x.shape[0], x.shape[1] * groups, *x.shape[2:])


def window_attention(view, window: int) -> torch.Tensor:
    """``SnapKVPress.compute_window_attention``: the last ``window`` queries over all keys, the window's keys dropped."""
    q = full_queries(view)[:, :, -window:]
    keys = repeat_kv(view.keys, view.num_groups)
    k_len = keys.shape[2]
    attn = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(view.head_dim)
    attn += torch.triu(torch.ones_like(attn) * float("-inf"), diagonal=k_len - window + 1)
    return F.softmax(attn, dim=-1, dtype=torch.float32)[..., :-window]


def kvpress_snapkv(view, window=4, kernel=5) -> torch.Tensor:
    """``SnapKVPress.score``."""
    bsz, heads, k_len = view.batch_size, view.num_kv_heads, view.seq_len
    scores = window_attention(view, window).mean(dim=-2)
    scores = F.avg_pool1d(scores, kernel_size=kernel, padding=kernel // 2, stride=1)
    scores = scores.view(bsz, heads, view.num_groups, k_len - window).mean(2)
    return F.pad(scores, (0, window), value=scores.max().item() + 1)


def kvpress_tova(view) -> torch.Tensor:
    """``TOVAPress.score``."""
    scores = window_attention(view, 1).mean(1)
    scores = scores.repeat(1, view.num_kv_heads, 1)
    return F.pad(scores, (0, 1), value=scores.max().item() + 1)


def kvpress_observed_attention(view) -> torch.Tensor:
    """``ObservedAttentionPress.score`` on eager attention weights (causal softmax of every query)."""
    q, keys = full_queries(view), repeat_kv(view.keys, view.num_groups)
    n = view.seq_len
    attn = torch.matmul(q, keys.transpose(2, 3)) * view.scaling + torch.triu(torch.full((n, n), float("-inf")), 1)
    attentions = F.softmax(attn, dim=-1, dtype=torch.float32)
    scores = attentions.sum(2) / torch.arange(n, 0, -1).to(attentions.dtype)
    return scores.view(view.batch_size, view.num_kv_heads, -1, n).mean(2)


def kvpress_lagkv(keys, values, n_sink=2, lag_size=4) -> torch.Tensor:
    """``LagKVPress.score`` (long-prompt branch) with ``_get_states_score``."""
    bsz, heads, q_len, d = keys.shape

    def states(target):
        ref, v = target[:, :, 1:], target[:, :, :-1]
        min_r = ref.min(dim=-2).values.unsqueeze(-2).expand(-1, -1, -1, lag_size, -1)
        max_r = ref.max(dim=-2).values.unsqueeze(-2).expand(-1, -1, -1, lag_size, -1)
        return ((v - min_r) / (max_r - min_r)).std(dim=-1).softmax(dim=-1)

    end = n_sink + ((q_len - n_sink) // lag_size) * lag_size
    tail = lag_size + q_len - end
    score = (states(keys[:, :, n_sink:end].view(bsz, heads, -1, lag_size, d))
             + states(values[:, :, n_sink:end].view(bsz, heads, -1, lag_size, d))) / 2
    score = (score.argsort(dim=-1).argsort(dim=-1) / lag_size).to(keys.dtype)
    return torch.cat([torch.ones(bsz, heads, n_sink), score.reshape(bsz, heads, -1), torch.ones(bsz, heads, tail)], dim=-1)


def test_snapkv_pad_window_is_snapkvpress_score():
    view = make_view(batch=1, kv_heads=2, groups=3, length=30, window=4)
    ours = SnapKVWindowScorer(kernel_size=5, pooling="avg", reduction="mean", pad_window=True).score(view)
    torch.testing.assert_close(ours, kvpress_snapkv(view), rtol=1e-5, atol=1e-6)


def test_tova_all_heads_is_tovapress_score():
    view = make_view(batch=1, kv_heads=2, groups=3, length=21)
    ours = TOVAScorer(heads="all").score(view)
    torch.testing.assert_close(ours[..., :-1], kvpress_tova(view)[..., :-1], rtol=1e-5, atol=1e-7)  # the last: forced (W=1)
    assert not torch.allclose(TOVAScorer().score(view)[..., :-1], ours[..., :-1])  # the group mean is another rule


def test_h2o_per_query_normalization_is_observedattentionpress_score():
    view = make_view(batch=1, kv_heads=2, groups=2, length=25)
    torch.testing.assert_close(H2OScorer(chunk_size=7, normalization="queries").score(view), kvpress_observed_attention(view),
                               rtol=1e-5, atol=1e-6)


def test_lagkv_unforced_is_lagkvpress_score():
    view = make_view(batch=1, kv_heads=2, groups=1, length=31)
    ours = LagKVScorer(num_sinks=2, lag_size=4, force_sinks=False, rank_ties="argsort")
    assert ours.forced_keep(view) is None and ours.minimum_budget(3) == 3
    torch.testing.assert_close(ours.score(view), kvpress_lagkv(view.keys, view.values), rtol=0, atol=1e-6)


def test_random_unmixed_seed_is_randompress_score():
    view = make_view(batch=1, kv_heads=2, length=13, layer_idx=5)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(7)
    want = torch.rand(1, 2, 13, generator=generator, device="cpu", dtype=view.keys.dtype)  # RandomPress(seed=7)
    assert torch.equal(RandomScorer(seed=7, per_layer=False).score(view), want)


def test_gather_topk_ties_are_torch_topks():
    scores = (torch.randint(0, 8, (1, 3, 200), generator=torch.Generator().manual_seed(0)).float() / 8)  # ties galore
    keep = torch.full((1, 3), 77)
    selection = GatherExecutor(ties="topk").select(scores, keep, torch.zeros_like(scores, dtype=torch.bool),
                                                   torch.ones(1, 200, dtype=torch.bool))
    assert torch.equal(selection.indices, scores.topk(77, dim=-1).indices.sort(dim=-1).values)  # ScorerPress.compress
    stable = GatherExecutor().select(scores, keep, torch.zeros_like(scores, dtype=torch.bool), torch.ones(1, 200, dtype=torch.bool))
    assert not torch.equal(stable.indices, selection.indices)  # "first" breaks them otherwise


def kvpress_chunkkv(global_scores: torch.Tensor, ratio: float, chunk_length: int) -> torch.Tensor:
    """``ChunkKVPress.compress``: the kept indices (shared by every head)."""
    kv_len = global_scores.shape[2]
    complete, remaining = kv_len // chunk_length, kv_len % chunk_length
    main = global_scores[..., : complete * chunk_length].sum(dim=1).view(-1, complete, chunk_length).mean(dim=-1)
    if remaining > 0:
        main = torch.cat([main, global_scores[..., -remaining:].sum(dim=1).mean(dim=-1, keepdim=True)], dim=-1)
    kept_chunks = max(1, int((complete + (remaining > 0)) * (1 - ratio)))
    indices = []
    for chunk in main.topk(kept_chunks, dim=-1).indices[0]:
        start = chunk * chunk_length
        indices.append(torch.arange(start, start + chunk_length) if chunk < complete else torch.arange(complete * chunk_length, kv_len))
    return torch.cat(indices).sort()[0]


@pytest.mark.parametrize(("length", "ratio"), [(203, 0.5), (200, 0.25), (187, 0.75), (61, 0.5)])
def test_chunk_without_fill_keeps_chunkkvpress_chunks(length, ratio):
    scores = torch.rand(1, 3, length, generator=torch.Generator().manual_seed(length))
    executor = Recipe(scorer="knorm", executor="chunk", window=0, compression_ratio=ratio, ratio_rounding="kvpress",
                      executor_kwargs={"chunk_length": 20, "fill": False}).strategies.executor
    assert executor.compression_ratio == ratio  # the recipe filled its field in
    keep = torch.full((1, 3), max(1, int(length * (1 - ratio))))
    selection = executor.select(scores, keep, torch.zeros_like(scores, dtype=torch.bool), torch.ones(1, length, dtype=torch.bool))
    want = kvpress_chunkkv(scores, ratio, 20)
    for head in range(3):
        assert torch.equal(selection.indices[0, head][selection.valid[0, head]], want)


def kvpress_adakv_pruned(scores: torch.Tensor, ratio: float, alpha: float) -> torch.Tensor:
    """``AdaKVPress.compress``: ``(B, Hkv, T)`` bool of the pruned entries (its ``masked_key_indices``)."""
    scores = scores.clone()
    bsz, heads, k_len = scores.shape
    n_kept = max(1, int(k_len * (1 - ratio)))
    n_safe = int(n_kept * alpha)
    if alpha > 0:
        n_safe = max(1, n_safe) if n_kept > 0 else 0
    scores.scatter_(-1, torch.topk(scores, n_safe, dim=-1).indices, torch.finfo(scores.dtype).max)
    n_pruned = heads * (k_len - n_kept)
    indices = torch.topk(-scores.reshape(bsz, -1), n_pruned, dim=1).indices.flatten()
    pruned = torch.zeros(bsz, heads, k_len, dtype=torch.bool)
    pruned[torch.arange(bsz).repeat_interleave(n_pruned), indices // k_len, indices % k_len] = True
    return pruned


@pytest.mark.parametrize(("ratio", "window"), [(0.5, 6), (0.75, 6), (0.25, 0), (0.9, 6)])
def test_adaptive_heads_with_kvpress_floor_keep_adakvpress_entries(ratio, window):
    length, heads = 120, 4
    scores = torch.rand(1, heads, length, generator=torch.Generator().manual_seed(int(ratio * 100))) ** 3  # skewed heads
    scores[:, 1] *= 0.1
    forced = torch.zeros(1, heads, length, dtype=torch.bool)
    forced[..., length - window:] = True
    kvpress_scores = scores.masked_fill(forced, scores.max() + 1)  # the window scores max + 1 there
    n_kept = max(1, int(length * (1 - ratio)))
    valid = torch.ones(1, length, dtype=torch.bool)
    keep = adaptive_head_budgets(kvpress_scores, torch.tensor([n_kept]), forced, valid, 0.2, rule="kvpress")
    chosen = select_top_k(kvpress_scores, keep, forced, valid)  # per-head counts, the executors' top-k
    kept = torch.zeros(1, heads, length, dtype=torch.bool).scatter_(-1, chosen.indices, chosen.valid)
    assert torch.equal(kept, ~kvpress_adakv_pruned(kvpress_scores, ratio, 0.2))


def kvpress_kvzip_layer_counts(score_val: torch.Tensor, ratio: float) -> list[list[int]]:
    """``KVzipPress.compress_post`` (``layerwise=False``): entries kept per layer and head."""
    n_layer, bsz, heads, ctx_len = score_val.shape
    n_pruned = int(score_val.numel() * ratio)
    pruned = torch.topk(-score_val.reshape(-1), n_pruned).indices
    kept = torch.ones(score_val.numel(), dtype=torch.bool)
    kept[pruned] = False
    return kept.view(n_layer, heads, ctx_len).sum(dim=-1).tolist()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_global_topk_per_head_kvpress_count_is_kvzippress_allocation(ratio):
    layers, heads, length = 5, 3, 70
    stats = torch.rand(layers, heads, length, generator=torch.Generator().manual_seed(3))
    stats[..., :4] = float("inf")  # the sinks (kvpress: amax + 1)
    allocator = GlobalTopKAllocator(split="heads", count="kvpress")
    request = BudgetRequest(layers, heads, length, max(1, int(length * (1 - ratio))), 4, stats, compression_ratio=ratio)
    finite = stats.clone()
    finite[..., :4] = stats[..., 4:].max() + 1
    assert allocator.allocate(request) == kvpress_kvzip_layer_counts(finite[:, None], ratio)


def kvpress_block_press(keys: torch.Tensor, ratio: float, block_size: int) -> torch.Tensor:
    """``BlockPress.compress`` around ``KeyDiffPress.score``: the kept indices ``(B, Hkv, k)``."""
    bsz, heads, k_len, head_dim = keys.shape
    block_size = block_size if block_size < k_len else k_len
    n_kept = max(1, int(k_len * (1 - ratio)))
    kept = torch.arange(n_kept).expand(bsz, heads, -1)
    for i in range(n_kept, k_len, block_size):
        current = torch.cat([kept, torch.arange(i, min(i + block_size, k_len)).expand(bsz, heads, -1)], dim=-1)
        sub = keys.gather(2, current.unsqueeze(-1).expand(-1, -1, -1, head_dim))
        anchor = F.normalize(sub, p=2, dim=-1).mean(dim=2, keepdim=True)
        scores = -F.cosine_similarity(sub, anchor, dim=-1)
        kept = current.gather(-1, scores.topk(n_kept, dim=-1).indices)
    return kept


@pytest.mark.parametrize(("length", "ratio", "block"), [(90, 0.5, 16), (64, 0.75, 128), (77, 0.25, 10)])
def test_block_scoring_is_blockpress_around_keydiff(length, ratio, block):
    view = make_view(batch=1, kv_heads=2, groups=1, length=length)
    keep = torch.tensor([max(1, int(length * (1 - ratio)))])
    selection = select_in_blocks(KeyDiffScorer(), view, keep, block, window=0)
    want = kvpress_block_press(view.keys, ratio, block).sort(dim=-1).values
    assert torch.equal(selection.indices, want)


def test_block_scoring_refuses_scorers_that_read_queries():
    view = make_view(batch=1, length=40)
    with pytest.raises(ValueError, match="a block has no queries"):
        select_in_blocks(TOVAScorer(), view, torch.tensor([20]), 8, window=0)
    with pytest.raises(ValueError, match=r"block_size.*forces entries"):
        Recipe(scorer="sink", block_size=8, window=0)


def test_decoding_every_schedule_cuts_like_decodingpress():
    """DecodingPress: after a prefill kept whole, every `interval`-th decoding forward cuts each layer to the target."""
    model = tiny_model("llama")
    interval, target, prompt = 4, 20, 18
    recipe = Recipe(scorer="knorm", window=0, compress_prefill=False, decode_budget=target, compress_every=interval,
                    decode_schedule="every")
    ids = random_prompt(1, prompt)
    held, want = [], []
    with torch.no_grad(), recipe.apply(model):
        out = model(ids, use_cache=True)
        cache, length = out.cache, prompt
        for step in range(1, 15):
            token = random_prompt(1, 1, seed=step)
            cache = model(token, cache=cache, use_cache=True).cache
            length += 1
            if step % interval == 0 and length > target:  # kvpress: layer_step_counts >= compression_interval
                length = target
            want.append(length)
            held.append(int(cache.layers[0].kept_counts().max()) if hasattr(cache.layers[0], "kept_counts")
                        else cache.layers[0].keys.shape[2])
    assert held == want
