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
    split : {"layers", "heads"}
        ``"layers"`` (default): each layer's budget per head, proportional to its winners (see
        above), split across its heads by the recipe's ``head_allocation``. ``"heads"``: every
        ``(layer, KV head)`` keeps exactly its own winners of the global ranking (KVzip and
        kvpress's ``KVzipPress``: a layer's total is then any number, not a multiple of ``Hkv``);
        needs a per-head executor (``ragged``) and ``head_allocation="uniform"``.
    count : {"budget", "kvpress"}
        How many entries survive in all: ``"budget"`` (default) ``L * Hkv * budget``;
        ``"kvpress"``, ``KVzipPress``'s ``N - int(N * ratio)`` over the ``N = L * Hkv * n`` entries,
        with the recipe's ``compression_ratio`` (``"budget"``'s count with an absolute budget).

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
    split: str = "layers"
    count: str = "budget"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "normalise", self.normalise, NORMALISATIONS)
        check_choice(type(self).__name__, "split", self.split, ("layers", "heads"))
        check_choice(type(self).__name__, "count", self.count, ("budget", "kvpress"))

    @property
    def per_head(self) -> bool:
        """Whether :meth:`allocate` returns a budget per ``(layer, KV head)`` (``split="heads"``)."""
        return self.split == "heads"

    def scores_statistic(self, scores: torch.Tensor, forced: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, Hkv, T)`` float32: this layer's normalised scores, forced ``+inf``, padding ``-inf``."""
        return ranking_statistic(scores, forced, valid, self.normalise)

    def allocate(self, request: BudgetRequest) -> list[int] | list[list[int]]:
        """``L`` budgets, proportional to each layer's winners of the global ranking (``split="heads"``: ``L`` lists of ``Hkv``)."""
        layers, length, budget, min_kept = check_budget_request("GlobalTopKAllocator", request)
        heads = request.num_kv_heads
        stats = check_entry_statistics("GlobalTopKAllocator", request.layer_statistics, layers, heads, length)
        entries = layers * heads * length
        total = layers * heads * budget
        if self.count == "kvpress" and request.compression_ratio is not None:
            total = entries - int(entries * request.compression_ratio)  # KVzipPress: n_pruned = int(N * ratio)
        if total >= entries:
            return [[length] * heads for _ in range(layers)] if self.per_head else [length] * layers
        order = torch.sort(stats.reshape(-1), descending=True, stable=True).indices[:total]
        if self.per_head:
            winners = torch.bincount(order // stats.shape[2], minlength=layers * heads)  # (L * Hkv,) per head
            return winners.view(layers, heads).tolist()
        winners = torch.bincount(order // (heads * stats.shape[2]), minlength=layers).tolist()  # (L,) entries kept per layer
        return proportional_budgets([float(c) for c in winners], layers * budget, min(min_kept, length), length)
