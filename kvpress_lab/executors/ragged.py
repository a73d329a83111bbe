"""Per-head executor: each KV head keeps its own number of entries and stores only those."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.cache_layers import RaggedLayer
from kvpress_lab.executors.gather import select_top_k
from kvpress_lab.protocols import Selection

__all__ = ["RaggedExecutor"]


@dataclass(frozen=True)
class RaggedExecutor:
    """Ragged executor: per-head budgets with real memory savings.

    Selection is the same top-k as ``gather`` (forced entries first, ties to the earlier token,
    original order kept), but every ``(row, head)`` keeps its own count and the layer stores only
    the kept entries, back to back (:class:`~kvpress_lab.cache_layers.RaggedLayer`): the
    bytes held are the kept entries times the bytes per entry, plus one int64 length per head.
    Decoding reads a transient dense view with per-head masks (eager and sdpa attention), or the
    flat storage through a variable-length kernel (flash-attention 2).
    """

    name: ClassVar[str] = "ragged"
    per_head_budgets: ClassVar[bool] = True

    def select(self, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> Selection:
        """Top-``keep[b, h]`` entries of every row and head (see :func:`~kvpress_lab.executors.gather.select_top_k`)."""
        return select_top_k(scores, keep, forced, candidates)

    def build_layer(self, keys: torch.Tensor, values: torch.Tensor, selection: Selection, logical_length: int) -> RaggedLayer:
        """Gather the ``(B, Hkv, T, D)`` entries and pack each head's kept ones."""
        index = selection.indices[..., None].expand(-1, -1, -1, keys.shape[-1])  # (B, Hkv, K, D)
        return RaggedLayer.from_dense(torch.gather(keys, 2, index), torch.gather(values, 2, index), selection.valid, logical_length)
