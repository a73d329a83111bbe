"""KeyDiff scoring: keys least similar to their head's mean key are kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from kvpress_lab.layer_view import LayerView

__all__ = ["KeyDiffScorer"]


@dataclass(frozen=True)
class KeyDiffScorer:
    """KeyDiff: score ``-cos(k_t, a)`` with ``a`` the mean of the unit-normalised keys of the head.

    Based on https://arxiv.org/abs/2504.15364 (KeyDiff: Key Similarity-Based KV Cache Eviction),
    following kvpress's ``KeyDiffPress``: the anchor is ``a = mean_t k_t / ||k_t||`` over the row's
    real tokens, and the keys that differ most from it (lowest cosine similarity) are kept.

    Notes
    -----
    No hyperparameters. Padded positions are left out of the anchor (kvpress averages over every
    cached position; the same for unpadded rows) and score 0. Keys are the cached ones (rotary
    applied), as in kvpress. One scoring of the whole prompt is ``KeyDiffPress``; the paper's
    block prompt processing is a chunked prefill (``recipe.prefill(model, ids, chunk_size=C)``):
    after each block the held keys and the block's are scored against their own anchor and the
    budget kept, the block's forward attending only to what was kept. kvpress's ``BlockPress``
    simulates it inside one forward (``Recipe(block_size=...)``, preset ``block-keydiff-kvpress``).

    Examples
    --------
    >>> keys = torch.tensor([[[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]])  # (B=1, Hkv=1, T=3, D=2)
    >>> view = LayerView(0, keys, keys, torch.ones(1, 3, dtype=torch.bool), window=1, scaling=1.0,
    ...                  num_query_heads=1, query_fn=lambda a, b: keys[:, :, a:b])
    >>> KeyDiffScorer().score(view)  # the odd key out scores highest
    tensor([[[-0.8944, -0.8944, -0.4472]]])
    """

    name: ClassVar[str] = "keydiff"
    chunked_prefill: ClassVar[bool] = True  # scores from the held keys alone: the paper's block prompt processing

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 negated cosine similarity to the head's mean unit key."""
        keys = view.keys.float()  # (B, Hkv, T, D)
        valid = view.valid.to(view.device)[:, None, :, None]  # (B, 1, T, 1)
        unit = torch.where(valid, F.normalize(keys, p=2, dim=-1), 0.0)
        count = valid.sum(dim=2, keepdim=True).clamp(min=1)  # (B, 1, 1, 1)
        anchor = unit.sum(dim=2, keepdim=True) / count  # (B, Hkv, 1, D)
        scores = -F.cosine_similarity(keys, anchor, dim=-1)  # (B, Hkv, T)
        return torch.where(valid[..., 0], scores, 0.0).nan_to_num(0.0)
