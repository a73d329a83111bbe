"""Key-norm scoring: entries whose keys have a small L2 norm are kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView

__all__ = ["KNormScorer"]


@dataclass(frozen=True)
class KNormScorer:
    """Knorm: score ``-||k||_2``, so keys with a low norm are kept (no attention needed).

    Based on https://arxiv.org/abs/2406.11430 (A Simple and Effective L2 Norm-Based Strategy for
    KV Cache Compression), as in kvpress's ``KnormPress``.

    Examples
    --------
    >>> keys = torch.tensor([[[[3.0, 4.0], [0.0, 1.0]]]])  # (B=1, Hkv=1, T=2, D=2)
    >>> view = LayerView(0, keys, keys, torch.ones(1, 2, dtype=torch.bool), window=1, scaling=1.0,
    ...                  num_query_heads=1, query_fn=lambda a, b: keys[:, :, a:b])
    >>> KNormScorer().score(view).tolist()
    [[[-5.0, -1.0]]]
    """

    name: ClassVar[str] = "knorm"
    chunked_prefill: ClassVar[bool] = True  # scores from the held entries and the current chunk's queries

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 negated key norms."""
        return torch.linalg.vector_norm(view.keys.float(), dim=-1).neg()  # (B, Hkv, T)
