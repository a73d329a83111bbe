"""Two-stage selection (CriticalKV): part of each head's budget is chosen by a first-stage score.

A scorer that defines ``staged_scores(view) -> (first, final)`` and ``first_stage_ratio`` is
selected in two stages: once the budgets are known, the engine marks the best
``floor(first_stage_ratio * keep)`` entries by ``first`` (forced entries first) as forced, then the
executor fills the rest of the budget by ``final`` as usual. A scorer cannot do this alone: the
stage-one size depends on the budget, decided after scoring (global allocators, AdaKV heads).
"""

from __future__ import annotations

import math

import torch

from kvpress_lab.executors.gather import rank_entries

__all__ = ["first_stage_entries"]


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
    width = int(counts.max()) if counts.numel() else 0
    if width == 0:
        return forced.clone()
    order = rank_entries(first, forced, candidates)[..., :width]  # (B, Hkv, width)
    chosen = torch.arange(width, device=first.device) < counts.to(first.device)[..., None]  # (B, Hkv, width)
    won = torch.zeros_like(forced).scatter(-1, order, chosen)
    return (won & candidates[:, None, :]) | forced
