"""Attention helpers shared by scorers and allocators (float32, padding- and causality-aware).

Besides attention itself, the two statistics of the attention funnel (PyramidKV,
https://arxiv.org/abs/2406.02069) live here, so allocators can use them without importing the
analysis code: **entropy** (nats) of each query's distribution over keys (uniform over ``n`` keys
gives ``log n``, a one-hot row 0) and **coverage**, the smallest number of keys whose
probabilities sum to ``>= mass`` (uniform over ``n`` keys gives ``ceil(mass * n)``, one-hot 1).
"""

from __future__ import annotations

import einops
import torch

from kvpress_lab.attention_weights import attention_probs
from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_choice, check_float

__all__ = [
    "attention_probs",
    "window_attention",
    "window_query_valid",
    "reduce_groups",
    "attention_entropy",
    "attention_coverage",
]

_TOLERANCE = 1e-6  # cumulative float32 sums that miss `mass` by less than this still count as reaching it


def window_attention(view: LayerView) -> torch.Tensor:
    """Attention of the observation window's queries over the layer's keys: ``(B, Hq, W, T)`` float32."""
    start = view.seq_len - view.window
    return attention_probs(view.window_queries, view.keys, view.valid, start, view.scaling)


def window_query_valid(view: LayerView) -> torch.Tensor:
    """``(B, W)`` bool: which window queries are real tokens (a row shorter than ``W`` has padded ones)."""
    return view.valid[:, view.seq_len - view.window :]


def reduce_groups(x: torch.Tensor, num_kv_heads: int, reduction: str = "mean") -> torch.Tensor:
    """Reduce the query heads of each GQA group onto their KV head.

    ``(B, Hq, ...) -> (B, Hkv, ...)`` with ``reduction`` in ``{"mean", "max", "sum"}``.

    >>> reduce_groups(torch.arange(8.).reshape(1, 4, 2), num_kv_heads=2).tolist()
    [[[1.0, 2.0], [5.0, 6.0]]]
    """
    check_choice("reduce_groups", "reduction", reduction, ("mean", "max", "sum"))
    return einops.reduce(x, "b (h g) ... -> b h ...", reduction, h=num_kv_heads)


def _mean_over_queries(values: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """``(B, Hq, Q)`` per-query values -> ``(B,)`` mean over heads and the row's real queries."""
    weights = query_valid[:, None, :].to(values.dtype)  # (B, 1, Q)
    count = (query_valid.sum(dim=-1) * values.shape[1]).clamp(min=1)  # (B,)
    return (values * weights).sum(dim=(1, 2)) / count


def attention_entropy(probs: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of attention rows: ``(B, Hq, Q, T)``, ``(B, Q)`` bool -> ``(B,)`` float32.

    Rows of padded queries (``query_valid`` False) are left out of the mean.

    >>> attention_entropy(torch.full((1, 1, 1, 4), 0.25), torch.ones(1, 1, dtype=torch.bool))
    tensor([1.3863])
    """
    per_query = -torch.special.xlogy(probs, probs).sum(dim=-1)  # (B, Hq, Q); 0 log 0 = 0
    return _mean_over_queries(per_query, query_valid)


def attention_coverage(probs: torch.Tensor, query_valid: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Mean number of keys holding ``mass`` of each attention row: ``(B, Hq, Q, T)`` -> ``(B,)`` float32.

    >>> attention_coverage(torch.full((1, 1, 1, 10), 0.1), torch.ones(1, 1, dtype=torch.bool))
    tensor([9.])
    """
    mass = check_float("attention_coverage", "mass", mass, minimum=0.0, maximum=1.0, min_inclusive=False)
    cumulative = probs.sort(dim=-1, descending=True).values.cumsum(dim=-1)  # (B, Hq, Q, T)
    needed = (cumulative < mass - _TOLERANCE).sum(dim=-1) + 1  # (B, Hq, Q)
    return _mean_over_queries(needed.clamp(max=probs.shape[-1]).float(), query_valid)
