"""H2O scoring: attention accumulated over every prompt query, computed in causal blocks of queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_choice, check_int

__all__ = ["H2OScorer", "attention_received"]


@dataclass(frozen=True)
class H2OScorer:
    """H2O (heavy hitters): attention each entry receives, summed over all prompt queries.

    Based on https://arxiv.org/abs/2306.14048 (H2O: Heavy-Hitter Oracle).

    Parameters
    ----------
    chunk_size : int
        Queries per block, ``>= 1``. Default 64 (on CPU at ``T = 4096`` the fastest of 8..1024:
        a block's logits stay in cache; 256 took 1.7x as long). The ``T x T`` attention matrix is never held:
        the block of queries ``s:e`` needs ``(B, Hq, e - s, e)`` float32 (causal: keys after the
        block's last query are never computed), i.e. memory ``O(T * chunk_size)`` per head; the
        result does not depend on the block size (up to float rounding).

    normalization : {"sum", "queries"}
        ``"sum"`` (default, the H2O paper): the attention each entry receives, summed over the
        queries. ``"queries"``, kvpress's ``ObservedAttentionPress``: divided by the number of
        queries that see the entry, ``T - t`` for entry ``t``, so late entries are not penalised
        for having been seen by fewer queries. Not chunkable (the count of queries an entry kept
        from earlier chunks has seen is not tracked).

    Notes
    -----
    Causal softmax in float32, padding never attended, padded queries contribute nothing.
    Query heads of a GQA group are averaged onto their KV head. Each block's queries come from
    ``view.queries``: inside a prefill on sdpa or flash attention, the queries the attention layer
    itself computed (``reads_every_query``, :mod:`kvpress_lab.engine.query_capture`); otherwise
    (eager attention, :func:`~kvpress_lab.compress_many`) one projection per block.

    **Chunked prefill** (:mod:`kvpress_lab.engine.chunking`): H2O accumulates across chunks as
    the original method does during generation. After each chunk the engine calls
    :meth:`score_chunk` for the attention the chunk's queries give to the entries held (kept ones
    and the chunk's own, causally) and adds it to the running score of every kept entry
    (``accumulates_scores``); an evicted entry's score is dropped with it. A kept entry's score is
    thus the attention it received from every query that ran while it was in the cache.

    Examples
    --------
    >>> keys = torch.zeros(1, 1, 3, 2)
    >>> view = LayerView(0, keys, keys, torch.ones(1, 3, dtype=torch.bool), window=1, scaling=1.0,
    ...                  num_query_heads=1, query_fn=lambda a, b: torch.zeros(1, 1, b - a, 2))
    >>> H2OScorer(chunk_size=2).score(view)  # uniform causal attention: 1 + 1/2 + 1/3, 1/2 + 1/3, 1/3
    tensor([[[1.8333, 0.8333, 0.3333]]])
    """

    name: ClassVar[str] = "h2o"
    accumulates_scores: ClassVar[bool] = True  # the engine adds score_chunk() to the kept entries' running scores
    reads_every_query: ClassVar[bool] = True  # the engine hands over the queries the layer computed (query_capture)
    chunk_size: int = 64
    normalization: str = "sum"

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "chunk_size", self.chunk_size, minimum=1)
        check_choice(type(self).__name__, "normalization", self.normalization, ("sum", "queries"))

    @property
    def chunked_prefill(self) -> bool:
        """Scores a chunk's queries and the engine accumulates across chunks; not with ``normalization="queries"``."""
        return self.normalization == "sum"

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 attention received from all prompt queries (summed, or per query seeing it)."""
        total = attention_received(view, 0, self.chunk_size)
        if self.normalization == "queries":  # kvpress: / arange(T, 0, -1), the queries that see each entry
            total = total / torch.arange(view.seq_len, 0, -1, device=total.device, dtype=total.dtype)
        return total

    def score_chunk(self, view: LayerView, query_start: int) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 attention received from the queries of entries ``query_start:T`` only.

        The view holds the entries kept from earlier chunks followed by the current chunk's,
        whose queries start at ``query_start``; each query sees the entries before it.
        """
        return attention_received(view, query_start, self.chunk_size)


@torch.no_grad()  # scores pick entries: nothing to differentiate, and matmul(out=) refuses tensors that need grad
def attention_received(view: LayerView, query_start: int, block: int) -> torch.Tensor:
    """Attention each entry receives from the queries of entries ``query_start:T``, summed: ``(B, Hkv, T)`` float32.

    Causal (query ``i`` sees entries ``<= i``), padding never attended, padded queries give
    nothing; query heads averaged per GQA group. Blocks of ``block`` queries: for queries
    ``s:e`` only the ``(B, Hkv, G * (e - s), e)`` logits they can see are computed, the causal
    mask is applied to the diagonal block only, and the softmax's column sums are added. Every
    block's logits and probabilities share one buffer (allocated once, softmax in place): a fresh
    multi-megabyte tensor per block costs page faults that were a fifth of the scorer's time on CPU.
    """
    keys = view.keys.float()  # (B, Hkv, T, D), converted once for every block
    batch, heads, length, head_dim = keys.shape
    groups = view.num_groups
    valid = view.valid.to(keys.device)  # (B, T)
    padded = ~valid
    any_padding = bool(padded.any())
    lowest = torch.finfo(torch.float32).min  # finite: a fully masked row (a padded query) stays NaN-free
    total = keys.new_zeros(batch, heads, length)  # (B, Hkv, T): summed over the group's query heads
    widest = min(block, length - query_start)
    buffer = keys.new_empty(batch * heads * groups * widest * length)  # room for the widest block's logits
    future = torch.ones(widest, widest, dtype=torch.bool, device=keys.device).triu(1)  # (Q, Q) keys after the query
    for start in range(query_start, length, block):
        stop = min(start + block, length)
        width = stop - start
        queries = view.queries(start, stop).float() * view.scaling  # (B, Hq, Q, D)
        queries = queries.reshape(batch, heads, groups * width, head_dim)  # Hq = (Hkv G): rows (g, q)
        probs = buffer[: batch * heads * groups * width * stop].view(batch, heads, groups * width, stop)
        torch.matmul(queries, keys[:, :, :stop].transpose(-1, -2), out=probs)  # logits (B, Hkv, G*Q, stop)
        probs[..., start:stop].view(batch, heads, groups, width, width).masked_fill_(future[:width, :width], lowest)
        if any_padding:
            probs.masked_fill_(padded[:, None, None, :stop], lowest)
        torch.softmax(probs, dim=-1, out=probs)  # (B, Hkv, G*Q, stop)
        if any_padding:  # padded queries attend nothing
            query_valid = valid[:, start:stop].repeat(1, groups)  # (B, G*Q), rows (g, q)
            probs.mul_(query_valid[:, None, :, None])
        total[..., :stop] += probs.sum(dim=-2)
    return total / groups  # (B, Hkv, T): mean over the group
