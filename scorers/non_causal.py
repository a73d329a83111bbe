"""Non-causal chunked attention scoring (Compactor): attention each key receives inside its chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_bool, check_choice, check_int

__all__ = ["NonCausalAttentionScorer", "non_causal_scores", "row_segments", "zscore"]

#: How a ragged last chunk is handled: ``"exact"`` attends only its real tokens; ``"kvpress"`` is
#: kvpress's ``NonCausalAttnPress``: the chunk is zero-padded, padded query rows get logits 0 and
#: padded keys ``-1e-9`` (so padding takes probability, and padded queries add to the sums).
TAILS = ("exact", "kvpress")


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """``(scores - mean) / max(std, 1e-6)`` over the whole tensor, unbiased std: kvpress's z-score, as written there.

    One element has no spread: it scores 0 (kvpress's expression gives NaN).
    """
    if scores.numel() < 2:
        return scores - scores.mean()
    return (scores - scores.mean()) / scores.std().clamp_min(1e-6)


def row_segments(valid: torch.Tensor, skip_start: int = 0, skip_end: int = 0) -> list[tuple[int, int]]:
    """Per row of a ``(B, T)`` padding mask, the ``(start, stop)`` of its real tokens without the first
    ``skip_start`` and the last ``skip_end`` (kvpress's rule when fewer are left: ``skip_start`` first)."""
    length = valid.shape[1]
    out = []
    for real in valid.sum(dim=-1).tolist():
        left = min(skip_start, real)
        right = min(skip_end, real - left)
        out.append((length - real + left, length - right))
    return out


def _chunk_attention_received(queries: torch.Tensor, keys: torch.Tensor, chunk: int, scaled: float | None,
                              tail: str) -> torch.Tensor:
    """Attention each key receives from its chunk's queries: ``(1, Hq, n, D)``, ``(1, Hkv, n, D)`` -> ``(1, Hkv, n)``.

    Written as kvpress's ``non_causal_chunked_attn`` (zero-padded tiles, per query head, then the
    mean over each GQA group), with the softmax scale and the ragged tail as options.
    """
    heads, length, dim = queries.shape[1], queries.shape[2], queries.shape[3]
    kv_heads = keys.shape[1]
    keys = keys.repeat_interleave(heads // kv_heads, dim=1)  # (1, Hq, n, D): repeat_kv
    padded = math.ceil(length / chunk) * chunk
    if padded > length:
        filler = queries.new_zeros(1, heads, padded - length, dim)
        queries, keys = torch.cat([queries, filler], dim=2), torch.cat([keys, filler], dim=2)
    tiles = padded // chunk
    dots = torch.matmul(queries.view(1, heads, tiles, chunk, dim), keys.view(1, heads, tiles, chunk, dim).transpose(-2, -1))
    if scaled is not None:
        dots = dots * scaled
    beyond = torch.arange(padded - chunk, padded, device=dots.device) >= length  # (C,) padded slots of the last tile
    if tail == "kvpress":
        dots[:, :, -1].masked_fill_(beyond[:, None], 0)
        dots[:, :, -1].masked_fill_(beyond[None, :], -1e-9)
        attn = torch.softmax(dots.to(torch.float32), dim=-1)
    else:
        dots[:, :, -1].masked_fill_(beyond[None, :], float("-inf"))
        attn = torch.softmax(dots.to(torch.float32), dim=-1)
        attn[:, :, -1].masked_fill_(beyond[:, None], 0.0)  # padded queries attend nothing
    received = attn.sum(dim=-2).view(1, heads, padded)[..., :length]  # (1, Hq, n)
    return received.view(1, kv_heads, heads // kv_heads, length).mean(dim=-2)  # (1, Hkv, n)


def non_causal_scores(view: LayerView, chunk_size: int, skip_start: int = 0, skip_end: int = 0, *, scaled: bool = True,
                      tail: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """Compactor's non-causal chunked attention on a segment of each row's real tokens.

    The segment is the row's real tokens without the first ``skip_start`` and the last ``skip_end``
    (:func:`row_segments`). It is cut into chunks of ``chunk_size`` tokens from its first token;
    inside a chunk every query attends to every key of the chunk (no causal mask; softmax of the
    logits scaled by ``view.scaling`` when ``scaled``); a key's score is the attention it receives
    summed over its chunk's queries, averaged over the query heads of its group, times ``||v||``,
    average-pooled with width 3 (zero beyond the segment), then z-scored over the row's heads and
    segment (:func:`zscore`).

    Returns
    -------
    tuple of torch.Tensor
        ``(B, Hkv, T)`` float32 scores (0 outside the segment) and the ``(B, T)`` bool segment.
    """
    scores = torch.zeros(view.batch_size, view.num_kv_heads, view.seq_len, device=view.device)
    segment = torch.zeros(view.batch_size, view.seq_len, dtype=torch.bool, device=view.device)
    for row, (start, stop) in enumerate(row_segments(view.valid, skip_start, skip_end)):
        if stop <= start:
            continue
        queries = view.queries(start, stop)[row : row + 1]  # (1, Hq, n, D), rotary applied
        received = _chunk_attention_received(queries, view.keys[row : row + 1, :, start:stop], chunk_size,
                                             view.scaling if scaled else None, tail)
        weighted = received * view.values[row : row + 1, :, start:stop].norm(dim=-1)  # (1, Hkv, n)
        pooled = F.avg_pool1d(weighted, kernel_size=3, padding=1, stride=1)  # zero padding counted (kvpress)
        scores[row, :, start:stop] = zscore(pooled)[0].float()
        segment[row, start:stop] = True
    return scores, segment


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
    scaled : bool
        Scale the logits by ``view.scaling`` (``1/sqrt(D)``) before the softmax, as attention does.
        Default ``True``; kvpress's press applies the softmax to unscaled ``q . k`` (``False``).
    tail : {"exact", "kvpress"}
        A ragged last chunk: ``"exact"`` (default) attends its real tokens only; ``"kvpress"``
        zero-pads it as kvpress does (padded queries get logits 0 and still add to every key's
        sum, padded keys ``-1e-9`` and still take probability).

    Notes
    -----
    The ``non-causal-kvpress`` preset (``scaled=False, tail="kvpress"``, no window) is kvpress's
    arithmetic; ``non-causal`` keeps the scale and the exact tail. Each row is scored on its real
    tokens alone and z-scored alone (kvpress: batches of one). Every prompt query is recomputed
    (``view.queries``); memory is ``O(T * chunk_size)`` per head.
    """

    name: ClassVar[str] = "non_causal"
    chunk_size: int = 256
    scaled: bool = True
    tail: str = "exact"

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "chunk_size", self.chunk_size, minimum=1)
        check_bool(type(self).__name__, "scaled", self.scaled)
        check_choice(type(self).__name__, "tail", self.tail, TAILS)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 z-scored non-causal attention (0 on padding)."""
        scores, _ = non_causal_scores(view, self.chunk_size, scaled=self.scaled, tail=self.tail)
        return scores
