"""ChunkKV selection: keep whole chunks of consecutive tokens, ranked by their mean score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.budgets import check_forced_fit
from kvpress_lab.cache_layers import CompressedLayer
from kvpress_lab.executors.gather import GatherExecutor, select_top_k
from kvpress_lab.protocols import Selection
from kvpress_lab.validation import check_bool, check_float, check_int

__all__ = ["ChunkExecutor", "whole_chunks"]


def chunk_ranking(scores: torch.Tensor, candidates: torch.Tensor, chunk_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk ids of every token and each chunk's score: ``(B, T)`` int64, ``(B, nC + 1)`` float32.

    Chunks are runs of ``chunk_length`` real tokens counted from each row's first real token (the
    last one may be shorter; padding belongs to the spare chunk ``nC``). A chunk's score is the
    mean over its tokens of the scores summed over KV heads (kvpress's ``ChunkKVPress``); empty
    chunks score ``-inf``.
    """
    batch, _, length = scores.shape
    device = scores.device
    pad = length - candidates.sum(dim=-1)  # (B,) left padding
    aligned = torch.arange(length, device=device)[None, :] - pad[:, None]  # (B, T): index among real tokens
    num_chunks = -(-length // chunk_length)
    chunk = torch.where(candidates, aligned.clamp(min=0) // chunk_length, num_chunks)  # (B, T); padding -> spare slot
    summed = torch.where(candidates, scores.float().nan_to_num(0.0, 0.0, 0.0).sum(dim=1), 0.0)  # (B, T)
    totals = torch.zeros(batch, num_chunks + 1, device=device).scatter_add_(1, chunk, summed)
    sizes = torch.zeros(batch, num_chunks + 1, device=device).scatter_add_(1, chunk, candidates.float())
    means = torch.where(sizes > 0, totals / sizes.clamp(min=1), float("-inf"))  # (B, nC + 1)
    return chunk, means


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
    chunk, means = chunk_ranking(scores, candidates, chunk_length)
    num_chunks = means.shape[1] - 1
    order = torch.sort(means, dim=-1, descending=True, stable=True).indices  # (B, nC + 1); empty chunks last
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
    fill : bool
        ``True`` (default): whole chunks while they fit, then the best single entries, so the
        layer keeps exactly its budget. ``False``: kvpress's ``ChunkKVPress``: whole chunks only,
        ``max(1, int(nC * (1 - ratio)))`` of the ``nC`` chunks (the ragged last one counted) with
        the recipe's ``compression_ratio`` (``max(1, k // C)`` with an absolute budget), so the
        layer keeps up to ``C`` entries fewer or more than ``k``. Chunks holding a forced entry
        (window, sinks) rank first; kvpress scores its window ``max + 1`` (``snapkv_window`` with
        ``pad_window``), which ranks its chunks first too.
    compression_ratio : float or None
        Filled in by the :class:`~kvpress_lab.Recipe` (``recipe_fields``); used by ``fill=False``.

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
    recipe_fields: ClassVar[tuple[str, ...]] = ("compression_ratio",)
    chunk_length: int = 20
    fill: bool = True
    compression_ratio: float | None = None

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "chunk_length", self.chunk_length, minimum=1)
        check_bool(type(self).__name__, "fill", self.fill)
        if self.compression_ratio is not None:
            check_float(type(self).__name__, "compression_ratio", self.compression_ratio, minimum=0.0, maximum=1.0)

    def select(self, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> Selection:
        """Forced entries, whole chunks, then the best entries; ``keep`` must be the same in every head of a row."""
        if bool((keep != keep[:, :1]).any()):
            raise ValueError(
                "The 'chunk' executor keeps the same number of entries in every KV head of a row; got per-head counts "
                f"{keep.tolist()}. Use head_allocation='uniform'."
            )
        forced = forced & candidates[:, None, :]
        check_forced_fit(forced.sum(dim=-1), keep.to(forced.device))
        if not self.fill:
            return self._kvpress_chunks(scores, keep, forced, candidates)
        chunks = whole_chunks(scores, keep, forced, candidates, self.chunk_length)
        return select_top_k(scores, keep, forced | chunks, candidates)

    def _kvpress_chunks(self, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor,
                        candidates: torch.Tensor) -> Selection:
        """Whole chunks only, kvpress's count; every head of a row keeps the same chunks.

        A row of at most ``C`` real tokens has no complete chunk: kvpress then uses the scorer's
        own top-``k`` (per head), and so does this row here.
        """
        heads, length = scores.shape[1], scores.shape[2]
        chunk, means = chunk_ranking(scores, candidates, self.chunk_length)  # (B, T), (B, nC + 1)
        pinned = torch.zeros_like(means, dtype=torch.bool).scatter_(1, chunk, forced.any(dim=1)) & (means > float("-inf"))
        kept = torch.zeros(scores.shape[0], heads, length, dtype=torch.bool, device=scores.device)
        short = None
        for b in range(scores.shape[0]):
            real = int(candidates[b].sum())
            if real <= self.chunk_length:
                short = select_top_k(scores, keep, forced, candidates) if short is None else short
                kept[b].scatter_(-1, short.indices[b], short.valid[b])
                continue
            total = -(-real // self.chunk_length)  # chunks, the ragged last one included
            count = (max(1, int(total * (1 - self.compression_ratio))) if self.compression_ratio is not None
                     else max(1, int(keep[b, 0]) // self.chunk_length))
            ranked = torch.where(pinned[b], float("inf"), means[b])[:total]
            winners = ranked.topk(min(count, total)).indices  # kvpress: chunk_scores.topk(n_chunks_kept)
            kept[b] = (torch.isin(chunk[b], winners) & candidates[b])[None, :]
        return _selection_of(kept)

    def build_layer(self, keys: torch.Tensor, values: torch.Tensor, selection: Selection, logical_length: int) -> CompressedLayer:
        """Gather ``(B, Hkv, T, D)`` into a dense :class:`~kvpress_lab.cache_layers.CompressedLayer`."""
        return GatherExecutor().build_layer(keys, values, selection, logical_length)


def _selection_of(kept: torch.Tensor) -> Selection:
    """The :class:`Selection` of a ``(B, Hkv, T)`` bool kept mask: ascending positions, fillers first."""
    length = kept.shape[-1]
    counts = kept.sum(dim=-1)  # (B, Hkv)
    width = int(counts.max())
    positions = torch.arange(length, device=kept.device)
    ascending = torch.sort(torch.where(kept, positions, length), dim=-1).values[..., :width]  # kept first, ascending
    slots = torch.arange(width, device=kept.device)
    shift = (width - counts)[..., None]  # fillers before the kept entries
    valid = slots >= shift
    indices = torch.where(valid, ascending.gather(-1, (slots - shift).clamp(min=0)), 0)
    return Selection(indices=indices, valid=valid)
