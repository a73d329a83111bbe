"""Global top-k allocation (KVzip's default): one ranking of every entry of every layer and head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.allocators._ranking import NORMALISATIONS, check_entry_statistics, ranking_statistic
from kvpress_lab.allocators.adaptive import proportional_budgets
from kvpress_lab.budgets import BudgetRequest, check_budget_request
from kvpress_lab.validation import check_choice

__all__ = ["GlobalTopKAllocator"]


@dataclass(frozen=True)
class GlobalTopKAllocator:
    """Global top-k: the ``L * Hkv * budget`` best entries of the whole model survive; a layer keeps its winners.

    KVzip's budget allocation (https://arxiv.org/abs/2505.23416, kvpress ``KVzipPress`` with
    ``layerwise=False``), usable with every scorer. At every compressible layer the engine hands
    :meth:`scores_statistic` the scorer's ``(B, Hkv, T)`` scores (normalised, forced entries
    ``+inf``, padding ``-inf``); after the last layer :meth:`allocate` ranks, for each row, all
    ``L * Hkv * n`` entries at once (stable: ties go to the shallower layer, lower head, earlier
    token) and gives layer ``l`` a budget proportional to ``c_l``, its entries among the top
    ``L * Hkv * budget``: ``c_l / Hkv`` per head, rounded by largest remainders so that the
    budgets sum to exactly ``L * budget`` (:func:`~kvpress_lab.allocators.adaptive.proportional_budgets`),
    each in ``[min(min_kept, n), n]``.

    Parameters
    ----------
    normalise : {"none", "minmax"}
        How scores are made comparable across layers before the ranking.
        ``"none"`` (default, KVzip): raw scores, right for attention probabilities (``kvzip``,
        ``snapkv_window``); ``"minmax"``: per row and layer, for scores of layer-dependent scale
        (``knorm``, ``keydiff``, ...).

    Notes
    -----
    A layer's budget counts entries per KV head, so its ``c_l`` winners are shared by its
    heads: with ``head_allocation="adaptive", head_floor=0`` (the ``kvzip`` preset) the layer
    then keeps its top ``Hkv * budget_l`` entries across heads, which is KVzip's head-level global
    ranking up to rounding ``c_l`` to a multiple of ``Hkv``. Every layer stays uncompressed until
    the prefill's last layer (scope ``"global"``), and the statistics are a copy of every layer's
    scores, ``(B, L, Hkv, T)`` float32, moved to the CPU for the ranking.

    Examples
    --------
    >>> stats = torch.tensor([[[9.0, 1.0, 8.0, float("inf")]], [[2.0, 3.0, 0.0, float("inf")]]])  # (L=2, Hkv=1, T=4)
    >>> GlobalTopKAllocator().allocate(BudgetRequest(2, 1, 4, 2, 1, layer_statistics=stats))
    [3, 1]
    """

    name: ClassVar[str] = "global_topk"
    scope: ClassVar[str] = "global"
    normalise: str = "none"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "normalise", self.normalise, NORMALISATIONS)

    def scores_statistic(self, scores: torch.Tensor, forced: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, Hkv, T)`` float32: this layer's normalised scores, forced ``+inf``, padding ``-inf``."""
        return ranking_statistic(scores, forced, valid, self.normalise)

    def allocate(self, request: BudgetRequest) -> list[int]:
        """``L`` budgets summing to ``L * budget``, proportional to each layer's winners of the global ranking."""
        layers, length, budget, min_kept = check_budget_request("GlobalTopKAllocator", request)
        stats = check_entry_statistics("GlobalTopKAllocator", request.layer_statistics, layers, request.num_kv_heads, length)
        if length <= budget:
            return [length] * layers
        per_layer = stats.shape[1] * stats.shape[2]
        order = torch.sort(stats.reshape(-1), descending=True, stable=True).indices[: layers * request.num_kv_heads * budget]
        winners = torch.bincount(order // per_layer, minlength=layers).tolist()  # (L,) entries kept per layer
        return proportional_budgets([float(c) for c in winners], layers * budget, min(min_kept, length), length)
