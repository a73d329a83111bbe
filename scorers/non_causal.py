"""Non-causal chunked attention scoring (Compactor): attention each key receives inside its chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import einops
import torch
import torch.nn.functional as F

from kvpress_lab.layer_view import LayerView
from kvpress_lab.scorers._rows import from_aligned, masked_zscore, row_shift, to_aligned
from kvpress_lab.validation import check_int

__all__ = ["NonCausalAttentionScorer", "non_causal_scores"]


def non_causal_scores(view: LayerView, chunk_size: int, skip_start: int = 0, skip_end: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Compactor's non-causal chunked attention on a segment of each row's real tokens.

    The segment is the row's real tokens without the first ``skip_start`` and the last ``skip_end``
    (kvpress's rule when fewer are left: ``skip_start`` first, then ``skip_end``). It is cut into
    chunks of ``chunk_size`` tokens from its first token; inside a chunk every query attends to every
    key of the chunk (no causal mask, softmax scaled by ``view.scaling``); a key's score is the
    attention it receives summed over its chunk's queries, averaged over the query heads of its
    group, times ``||v||``, average-pooled with width 3 (zero beyond the segment), then z-scored
    per row over its heads and the segment.

    Returns
    -------
    tuple of torch.Tensor
        ``(B, Hkv, T)`` float32 scores (0 outside the segment) and the ``(B, T)`` bool segment.
    """
    length, num_kv = view.seq_len, view.num_kv_heads
    valid = view.valid.to(view.device)
    real = valid.sum(dim=-1)  # (B,)
    left = real.clamp(max=skip_start)
    right = (real - left).clamp(max=skip_end)
    seg_len = real - left - right  # (B,)
    shift, _ = row_shift(valid)
    shift = shift + left  # aligned index 0 = first segment token
    rel = torch.arange(length, device=view.device)
    inside = rel[None, :] < seg_len[:, None]  # (B, T) in the aligned frame
    queries = to_aligned(view.queries(0, length).float(), shift)  # (B, Hq, T, D)
    keys = to_aligned(view.keys.float(), shift)  # (B, Hkv, T, D)
    received = []
    for start in range(0, length, chunk_size):
        stop = min(start + chunk_size, length)
        q = einops.rearrange(queries[:, :, start:stop], "b (h g) q d -> b h g q d", h=num_kv)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", q, keys[:, :, start:stop]) * view.scaling  # (B, Hkv, G, C, C)
        chunk_in = inside[:, start:stop]  # (B, C)
        logits = logits.masked_fill(~chunk_in[:, None, None, None, :], float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        probs = probs * chunk_in[:, None, None, :, None]  # queries outside the segment attend nothing
        received.append(probs.sum(dim=3).mean(dim=2))  # (B, Hkv, C)
    attention = torch.cat(received, dim=-1)  # (B, Hkv, T), aligned
    scores = attention * torch.linalg.vector_norm(to_aligned(view.values.float(), shift), dim=-1)
    scores = torch.where(inside[:, None, :], scores, 0.0)
    scores = F.avg_pool1d(scores, kernel_size=3, stride=1, padding=1)  # zero padding counted (kvpress)
    scores = masked_zscore(scores, inside)
    return from_aligned(scores.contiguous(), shift), from_aligned(inside[:, None, :].contiguous(), shift)[:, 0]


@dataclass(frozen=True)
class NonCausalAttentionScorer:
    """Non-causal chunked attention: attention a key receives from its chunk's queries, both directions.

    Based on https://arxiv.org/abs/2507.08143 (Compactor), as kvpress's ``NonCausalAttnPress``.
    The prompt is cut into chunks of ``chunk_size`` tokens from each row's first real token; within
    a chunk each query's softmax runs over all the chunk's keys (no causal mask); a key scores the
    attention summed over the chunk's queries (mean over its GQA group), times ``||v_t||``,
    average-pooled with width 3 along tokens, and z-scored.

    Parameters
    ----------
    chunk_size : int
        Chunk length, ``>= 1``. Default 256 (kvpress).

    Notes
    -----
    Differences from kvpress: the softmax is scaled by ``view.scaling`` (``1/sqrt(D)``), as
    attention is; kvpress's press applies the softmax to unscaled ``q . k``. kvpress masks a
    ragged last chunk's padding with ``-1e-9`` (so padding still takes probability); here padding
    and the ragged tail are masked out exactly. Chunks start at each row's first real token and
    z-scoring is per row (kvpress: over the whole batch), so left padding changes nothing.
    Every prompt query is recomputed (``view.queries``); memory is ``O(T * chunk_size)`` per head.
    """

    name: ClassVar[str] = "non_causal"
    chunk_size: int = 256

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "chunk_size", self.chunk_size, minimum=1)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 z-scored non-causal attention (0 on padding)."""
        scores, _ = non_causal_scores(view, self.chunk_size)
        return scores
