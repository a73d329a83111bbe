"""ChunkKV selection: keep whole chunks of consecutive tokens, ranked by their mean score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.budgets import check_forced_fit
from kvpress_lab.cache_layers import CompressedLayer
from kvpress_lab.executors.gather import GatherExecutor, select_top_k
from kvpress_lab.protocols import Selection
from kvpress_lab.validation import check_int

__all__ = ["ChunkExecutor", "whole_chunks"]


def whole_chunks(scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor,
                 chunk_length: int) -> torch.Tensor:
    """Entries of the best whole chunks that fit each head's budget beside its forced entries: ``(B, Hkv, T)`` bool.

    Chunks are runs of ``chunk_length`` real tokens counted from each row's first real token (the
    last one may be shorter; padding belongs to none). A chunk's score is the mean over its tokens
    of the scores summed over KV heads (kvpress's ``ChunkKVPress``), so every head of a row ranks
    the chunks alike; ties go to the earlier chunk. Each head takes the longest prefix of that
    ranking whose not-yet-forced entries fit in ``keep - forced``.

    Parameters
    ----------
    scores : torch.Tensor
        ``(B, Hkv, T)`` float32.
    keep : torch.Tensor
        ``(B, Hkv)`` int64 budgets.
    forced : torch.Tensor
        ``(B, Hkv, T)`` bool, already restricted to candidates.
    candidates : torch.Tensor
        ``(B, T)`` bool, ``False`` on (left) padding.
    chunk_length : int
        ``C``, tokens per chunk.
    """
    batch, heads, length = scores.shape
    device = scores.device
    pad = length - candidates.sum(dim=-1)  # (B,) left padding
    aligned = torch.arange(length, device=device)[None, :] - pad[:, None]  # (B, T): index among real tokens
    num_chunks = -(-length // chunk_length)
    chunk = torch.where(candidates, aligned.clamp(min=0) // chunk_length, num_chunks)  # (B, T); padding -> spare slot
    summed = torch.where(candidates, scores.float().nan_to_num(0.0, 0.0, 0.0).sum(dim=1), 0.0)  # (B, T)
    totals = torch.zeros(batch, num_chunks + 1, device=device).scatter_add_(1, chunk, summed)
    sizes = torch.zeros(batch, num_chunks + 1, device=device).scatter_add_(1, chunk, candidates.float())
    means = torch.where(sizes > 0, totals / sizes.clamp(min=1), float("-inf"))  # (B, nC + 1); empty chunks last
    order = torch.sort(means, dim=-1, descending=True, stable=True).indices  # (B, nC + 1)
    fresh = (candidates[:, None, :] & ~forced).float()  # (B, Hkv, T): entries a chunk would add
    cost = torch.zeros(batch, heads, num_chunks + 1, device=device).scatter_add_(2, chunk[:, None, :].expand(-1, heads, -1), fresh)
    order_h = order[:, None, :].expand(-1, heads, -1)
    spent = torch.cumsum(cost.gather(-1, order_h), dim=-1)  # (B, Hkv, nC + 1) in ranking order
    room = (keep.to(device) - forced.sum(dim=-1))[..., None]  # (B, Hkv, 1)
    taken_sorted = (spent <= room) & (means.gather(-1, order)[:, None, :] > float("-inf"))
    taken = torch.zeros_like(taken_sorted).scatter(-1, order_h, taken_sorted)  # (B, Hkv, nC + 1) by chunk id
    return taken.gather(-1, chunk[:, None, :].expand(-1, heads, -1)) & candidates[:, None, :]


@dataclass(frozen=True)
class ChunkExecutor:
    """ChunkKV: whole chunks of ``chunk_length`` consecutive tokens, ranked by mean score, then the best entries.

    Based on https://arxiv.org/abs/2502.00299 (ChunkKV: Semantic-Preserving KV Cache Compression
    for Efficient Long-Context LLM Inference), following kvpress's ``ChunkKVPress``. An executor
    rather than a scorer wrapper: keeping whole chunks is a selection rule that needs the budget,
    which only the executor receives, and as an executor it composes with every scorer.

    Parameters
    ----------
    chunk_length : int
        ``C``, tokens per chunk, ``>= 1``. Default 20 (kvpress and the paper).

    Notes
    -----
    Per row and head with budget ``k``: the forced entries (window, sinks) are kept, then whole
    chunks in ranking order (:func:`whole_chunks`) while their entries fit in what remains; the
    remaining ``< C`` or so slots (a budget that is not a multiple of ``C``, or the next chunk not
    fitting) go to the best remaining entries by score, so the layer keeps exactly ``k`` entries.
    All heads of a row keep the same count and share the chunk ranking (dense, like ``gather``).

    Differences from kvpress: ``ChunkKVPress`` keeps ``max(1, int(ceil(T / C) * (1 - ratio)))``
    whole chunks and leaves the rest of the budget unused (or, when one chunk exceeds the budget,
    keeps more than it); it protects no window of its own. Here the window and sinks are always
    kept and the budget is filled, so methods are compared at equal cache sizes. With no forced
    entries, ``T`` and ``k`` multiples of ``C``, both keep the same chunks. Rows of fewer than
    ``C`` real tokens hold one partial chunk: when it does not fit, selection is plain top-``k``
    (kvpress delegates to the scorer's own top-``k`` when ``T < C``).
    """

    name: ClassVar[str] = "chunk"
    per_head_budgets: ClassVar[bool] = False
    chunk_length: int = 20

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "chunk_length", self.chunk_length, minimum=1)

    def select(self, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> Selection:
        """Forced entries, whole chunks, then the best entries; ``keep`` must be the same in every head of a row."""
        if bool((keep != keep[:, :1]).any()):
            raise ValueError(
                "The 'chunk' executor keeps the same number of entries in every KV head of a row; got per-head counts "
                f"{keep.tolist()}. Use head_allocation='uniform'."
            )
        forced = forced & candidates[:, None, :]
        check_forced_fit(forced.sum(dim=-1), keep.to(forced.device))
        chunks = whole_chunks(scores, keep, forced, candidates, self.chunk_length)
        return select_top_k(scores, keep, forced | chunks, candidates)

    def build_layer(self, keys: torch.Tensor, values: torch.Tensor, selection: Selection, logical_length: int) -> CompressedLayer:
        """Gather ``(B, Hkv, T, D)`` into a dense :class:`~kvpress_lab.cache_layers.CompressedLayer`."""
        return GatherExecutor().build_layer(keys, values, selection, logical_length)
