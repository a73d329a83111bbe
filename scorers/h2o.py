"""H2O scoring: attention accumulated over every prompt query, computed in chunks of queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.attention import attention_probs, reduce_groups
from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_int

__all__ = ["H2OScorer"]


@dataclass(frozen=True)
class H2OScorer:
    """H2O (heavy hitters): attention each entry receives, summed over all prompt queries.

    Based on https://arxiv.org/abs/2306.14048 (H2O: Heavy-Hitter Oracle).

    Parameters
    ----------
    chunk_size : int
        Queries per block, ``>= 1``. Default 256. The ``T x T`` attention matrix is never held:
        each block needs ``(B, Hq, chunk_size, T)`` float32, i.e. memory ``O(T * chunk_size)``
        per head; the result does not depend on the block size (up to float rounding).

    Notes
    -----
    Causal softmax in float32, padding never attended, padded queries contribute nothing.
    Query heads of a GQA group are averaged onto their KV head. Every query is recomputed from
    the layer's input by ``view.queries`` (one projection per block).

    Examples
    --------
    >>> keys = torch.zeros(1, 1, 3, 2)
    >>> view = LayerView(0, keys, keys, torch.ones(1, 3, dtype=torch.bool), window=1, scaling=1.0,
    ...                  num_query_heads=1, query_fn=lambda a, b: torch.zeros(1, 1, b - a, 2))
    >>> H2OScorer(chunk_size=2).score(view)  # uniform causal attention: 1 + 1/2 + 1/3, 1/2 + 1/3, 1/3
    tensor([[[1.8333, 0.8333, 0.3333]]])
    """

    name: ClassVar[str] = "h2o"
    chunk_size: int = 256

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "chunk_size", self.chunk_size, minimum=1)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 attention received from all prompt queries."""
        keys = view.keys.float()  # (B, Hkv, T, D), converted once for every block
        total = keys.new_zeros(view.batch_size, view.num_query_heads, view.seq_len)  # (B, Hq, T)
        for start in range(0, view.seq_len, self.chunk_size):
            stop = min(start + self.chunk_size, view.seq_len)
            probs = attention_probs(view.queries(start, stop), keys, view.valid, start, view.scaling)  # (B, Hq, Q, T)
            total += probs.sum(dim=2)
        return reduce_groups(total, view.num_kv_heads, "mean")  # (B, Hkv, T)
