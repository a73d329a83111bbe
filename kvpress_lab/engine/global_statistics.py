"""What a ``"global"`` allocator is handed at every compressible layer of the prefill.

A global allocator defines one of

* ``layer_statistic(view) -> (B,)`` float32 — a statistic of the layer's view (``adaptive``:
  attention entropy), or
* ``scores_statistic(scores, forced, valid) -> (B, ...)`` float32 — a statistic of the scorer's
  ``(B, Hkv, T)`` scores (``global_topk``, ``threshold``: the normalised scores themselves),
  preferred when both exist.

The engine stacks the layers' answers into ``(B, L, ...)`` and hands row ``b``'s slice to
``allocate`` as ``BudgetRequest.layer_statistics`` (:func:`kvpress_lab.engine.planning.plan_budgets`).
"""

from __future__ import annotations

from typing import Any

import torch

from kvpress_lab.capabilities import ALLOCATOR
from kvpress_lab.layer_view import LayerView

__all__ = ["ranks_scores", "layer_statistic"]


def ranks_scores(allocator: Any) -> bool:
    """Whether a global ``allocator`` takes the scorer's scores (``scores_statistic``) rather than the view."""
    return allocator.scope == "global" and ALLOCATOR.of(allocator, "scores_statistic") is not None


def layer_statistic(allocator: Any, view: LayerView | None, scores: torch.Tensor | None, forced: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor | None:
    """One layer's statistic for ``allocator``, or ``None`` when it takes none (static) or not yet.

    Parameters
    ----------
    allocator : Allocator
        The recipe's allocator.
    view : LayerView or None
        The layer's view (needed by ``layer_statistic``).
    scores : torch.Tensor or None
        ``(B, Hkv, T)`` float32 scores; ``None`` while they are not known (a scorer scored after
        the prefill: the statistic is asked again with them).
    forced : torch.Tensor
        ``(B, Hkv, T)`` bool, the window and the scorer's forced entries.
    valid : torch.Tensor
        ``(B, T)`` bool, ``False`` on padding.
    """
    if allocator.scope != "global":
        return None
    if ranks_scores(allocator):
        if scores is None:
            return None
        return allocator.scores_statistic(scores, forced & valid.to(forced.device)[:, None, :], valid).float()
    if view is None:
        return None
    return allocator.layer_statistic(view).float()
