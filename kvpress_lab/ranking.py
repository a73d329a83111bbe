"""The one order in which entries are kept: forced first, then by score, ties to the earlier token.

Executors (:func:`~kvpress_lab.executors.gather.select_top_k`), two-stage selection
(:func:`first_stage_entries`, CriticalKV) and AdaKV's safeguard
(:func:`~kvpress_lab.head_allocation.safeguard_entries`) all rank a layer's entries the same way;
this ground-floor module owns that order so the engine and the plugins share it without
importing each other.
"""

from __future__ import annotations

import math

import torch

__all__ = ["rank_entries", "best_entries", "first_stage_entries"]


def rank_entries(scores: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Token order of every ``(row, head)``, best first: ``(B, Hkv, T)`` int64.

    Forced entries come first whatever their scores, then the other real tokens by descending
    score (NaN ranks lowest, below ``-inf``), then padding; ties go to the earlier token. Built
    from two stable sorts, so no score value (``+inf`` included) can outrank a forced entry.

    >>> nan, inf = float("nan"), float("inf")
    >>> forced = torch.tensor([[[False, False, False, True]]])
    >>> rank_entries(torch.tensor([[[nan, inf, 1.0, 0.0]]]), forced, torch.ones(1, 4, dtype=torch.bool)).tolist()
    [[[3, 1, 2, 0]]]
    """
    by_score = torch.sort(scores.float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf")), dim=-1,
                          descending=True, stable=True).indices  # (B, Hkv, T)
    nan_last = torch.isnan(scores).gather(-1, by_score)  # NaN scores sort with -inf: move them after it
    by_score = by_score.gather(-1, torch.sort(nan_last.to(torch.int8), dim=-1, stable=True).indices)
    tier = forced.to(torch.int8) * 2 + candidates[:, None, :].expand_as(forced).to(torch.int8)  # 2 forced, 1 real, 0 padding
    by_tier = torch.sort(tier.gather(-1, by_score), dim=-1, descending=True, stable=True).indices
    return by_score.gather(-1, by_tier)


def best_entries(scores: torch.Tensor, counts: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``(B, Hkv, T)`` bool: the first ``counts[b, h]`` entries of each head in :func:`rank_entries` order.

    ``counts`` is ``(B, Hkv)`` int64 (on any device); padding (``candidates`` ``(B, T)`` false) is
    never chosen.

    >>> best_entries(torch.tensor([[[0.1, 0.9, 0.5]]]), torch.tensor([[2]]), torch.zeros(1, 1, 3, dtype=torch.bool),
    ...              torch.ones(1, 3, dtype=torch.bool)).int().tolist()
    [[[0, 1, 1]]]
    """
    width = int(counts.max()) if counts.numel() else 0
    chosen = torch.zeros_like(forced)
    if width == 0:
        return chosen
    order = rank_entries(scores, forced, candidates)[..., :width]  # (B, Hkv, width)
    within = torch.arange(width, device=scores.device) < counts.to(scores.device)[..., None]  # (B, Hkv, width)
    return chosen.scatter(-1, order, within) & candidates[:, None, :]


def first_stage_entries(
    first: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Entries won in stage one: ``(B, Hkv, T)`` bool, the forced ones included.

    Parameters
    ----------
    first : torch.Tensor
        ``(B, Hkv, T)`` first-stage scores.
    keep : torch.Tensor
        ``(B, Hkv)`` int64 on the CPU, each head's budget.
    forced : torch.Tensor
        ``(B, Hkv, T)`` bool, entries kept whatever their scores (they rank first in stage one).
    candidates : torch.Tensor
        ``(B, T)`` bool, ``False`` on padding.
    ratio : float
        Stage one's share of the budget, in ``[0, 1]``: ``floor(ratio * keep)`` entries per head.

    Examples
    --------
    >>> first = torch.tensor([[[0.1, 0.9, 0.5, 0.3, 0.0]]])
    >>> forced = torch.tensor([[[False, False, False, False, True]]])
    >>> won = first_stage_entries(first, torch.tensor([[4]]), forced, torch.ones(1, 5, dtype=torch.bool), 0.5)
    >>> won.int().tolist()  # floor(0.5 * 4) = 2: the forced entry, then the best first-stage score
    [[[0, 1, 0, 0, 1]]]
    """
    if not 0.0 <= ratio <= 1.0 or math.isnan(ratio):
        raise ValueError(f"first_stage_ratio must lie in [0, 1], got {ratio!r}.")
    forced = forced & candidates[:, None, :]
    counts = torch.floor(keep.double() * ratio).long()  # (B, Hkv)
    return best_entries(first, counts, forced, candidates) | forced
