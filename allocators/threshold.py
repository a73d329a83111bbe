"""Threshold allocation (DMS-style): keep every entry whose normalised score exceeds a threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.allocators._ranking import NORMALISATIONS, check_entry_statistics, ranking_statistic
from kvpress_lab.budgets import BudgetRequest, check_budget_request
from kvpress_lab.validation import check_choice, check_float

__all__ = ["ThresholdAllocator"]


@dataclass(frozen=True)
class ThresholdAllocator:
    """Threshold: a layer keeps the entries scoring above ``threshold``, so budgets follow each input.

    The decision rule of Dynamic Memory Sparsification (https://arxiv.org/abs/2506.05345: evict
    where a learned score crosses a threshold) and of kvpress's ``ThresholdPress``, applied to any
    scorer's (normalised) scores instead of DMS's trained eviction head. The engine hands
    :meth:`scores_statistic` every layer's scores (forced entries ``+inf``, padding ``-inf``);
    :meth:`allocate` gives layer ``l`` of a row ``ceil(c_l / Hkv)`` entries per KV head, ``c_l``
    the row's entries of that layer (all heads) scoring strictly above ``threshold``, clamped to
    ``[min(min_kept, n), n]``. The recipe takes no ``budget`` / ``compression_ratio``
    (``uses_budget = False``: giving one is an error): what a row spends depends on its scores only.

    Parameters
    ----------
    threshold : float
        Entries scoring ``> threshold`` (after normalisation) are kept. Default 0.5.
    normalise : {"none", "minmax"}
        ``"minmax"`` (default): per row and layer, scores mapped to ``[0, 1]`` over the real
        unforced entries, so the threshold means the same for every scorer; ``"none"``: raw
        scores (attention probabilities for ``kvzip``).

    Notes
    -----
    The budget actually spent is reported per row: ``session.plan.keep`` (``(B, L)`` entries
    per KV head, ``with recipe.apply(model) as session``) and, per row and head,
    :func:`kvpress_lab.cache_report` (``layers[i].kept``). With ``Hkv = 1`` a layer keeps exactly
    the entries above the threshold (plus the forced ones); with more heads its ``c_l`` entries are
    rounded up to ``Hkv * ceil(c_l / Hkv)``, spread over heads by each head's own top scores
    (``head_allocation="uniform"``) or by one ranking across heads (``"adaptive"``, ``head_floor=0``:
    then exactly the above-threshold entries plus the ``Hkv * ceil(c_l / Hkv) - c_l`` next best).

    Examples
    --------
    >>> stats = torch.tensor([[[0.9, 0.1, 0.7, float("inf")]], [[0.2, 0.6, 0.0, float("inf")]]])  # (L=2, Hkv=1, T=4)
    >>> ThresholdAllocator(threshold=0.5, normalise="none").allocate(BudgetRequest(2, 1, 4, 2, 1, layer_statistics=stats))
    [3, 2]
    """

    name: ClassVar[str] = "threshold"
    scope: ClassVar[str] = "global"
    uses_budget: ClassVar[bool] = False  # Recipe refuses budget / compression_ratio: they would be ignored
    threshold: float = 0.5
    normalise: str = "minmax"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "threshold", check_float(owner, "threshold", self.threshold))
        check_choice(owner, "normalise", self.normalise, NORMALISATIONS)

    def scores_statistic(self, scores: torch.Tensor, forced: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, Hkv, T)`` float32: this layer's normalised scores, forced ``+inf``, padding ``-inf``."""
        return ranking_statistic(scores, forced, valid, self.normalise)

    def allocate(self, request: BudgetRequest) -> list[int]:
        """``L`` budgets: ``ceil(entries above the threshold / Hkv)`` per layer, within ``[min(min_kept, n), n]``."""
        layers, length, _, min_kept = check_budget_request("ThresholdAllocator", request)
        heads = request.num_kv_heads
        stats = check_entry_statistics("ThresholdAllocator", request.layer_statistics, layers, heads, length)
        above = (stats > self.threshold).reshape(layers, -1).sum(dim=-1).tolist()  # (L,)
        low = min(min_kept, length)
        return [min(max(math.ceil(int(c) / heads), low), length) for c in above]
