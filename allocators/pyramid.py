"""PyramidKV allocation: an arithmetic schedule, more entries in shallow layers, fewer in deep ones."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

from kvpress_lab.budgets import BudgetRequest, check_budget_request
from kvpress_lab.validation import check_choice, check_float

__all__ = ["PyramidAllocator", "reference_budgets", "conserved_budgets"]


@dataclass(frozen=True)
class PyramidAllocator:
    """PyramidKV: per-layer budgets decreasing linearly with depth, mean budget ``B`` per layer.

    Based on https://arxiv.org/abs/2406.02069 (PyramidKV), schedule of the reference code
    Zefan-Cai/KVCache-Factory ``pyramidkv/pyramidkv_utils.py`` (``PyramidKVCluster.update_kv``).

    With budget ``B`` (window included), window ``w``, ``L`` layers and ``T`` real prompt tokens,
    the prefix (non-window) part of layer ``l`` keeps ``max - l * (max - min) / (L - 1)`` entries,
    where ``min = (B - w) / beta`` and ``max = 2 (B - w) - min``; when ``max >= T - w`` the
    schedule is clamped to ``max = T - w``, ``min = 2 (B - w) - max``. Every layer also keeps the
    ``w`` window entries. When ``T <= B`` nothing is compressed: every layer keeps ``T``.

    Parameters
    ----------
    beta : float
        Steepness, ``>= 1``: the deepest layer keeps ``(B - w) / beta`` prefix entries
        (``beta = 1`` is uniform). Default 20, as in the paper.
    rounding : {"conserve", "reference"}
        ``"conserve"`` (default) rounds the exact schedule to integers whose sum is exactly
        ``L * B`` (largest remainders, ties to shallower layers), so the mean is the budget and
        comparisons with uniform allocators are fair. ``"reference"`` reproduces the reference
        code's per-layer numbers exactly, floor divisions included: its mean exceeds the budget
        (``L=32, w=8, T=7500``: 71.5 at ``B=64``, +11.7%; 133.5 at ``B=128``, +4.3%; 2048.5 at
        ``B=2048``). It also keeps the reference's fallback to a *uniform* ``B`` per layer when
        ``B < T < 2 (B - w)`` (its SnapKV branch), where ``"conserve"`` keeps the pyramid.

    Notes
    -----
    The reference divides by ``L - 1`` and fails for a single layer; here ``L = 1`` keeps
    ``min(B, T)`` in both modes. The budget must be ``>= w`` whenever ``T > B``.

    Examples
    --------
    >>> request = BudgetRequest(num_layers=4, num_kv_heads=2, prompt_length=1000, budget=64, min_kept=8)
    >>> PyramidAllocator().allocate(request)
    [117, 82, 46, 11]
    >>> PyramidAllocator(rounding="reference").allocate(request)
    [118, 82, 46, 10]
    """

    name: ClassVar[str] = "pyramid"
    scope: ClassVar[str] = "static"
    beta: float = 20
    rounding: str = "conserve"

    def __post_init__(self) -> None:
        check_float(type(self).__name__, "beta", self.beta, minimum=1.0)
        check_choice(type(self).__name__, "rounding", self.rounding, ("conserve", "reference"))

    def allocate(self, request: BudgetRequest) -> list[int]:
        """``L`` per-layer budgets (window included), non-increasing with depth, each in ``[min(w, T), T]``."""
        layers, length, budget, window = check_budget_request("PyramidAllocator", request)
        if length <= budget:
            return [length] * layers
        if layers == 1:
            return [budget]
        schedule = reference_budgets if self.rounding == "reference" else conserved_budgets
        return schedule(layers, length, budget, window, self.beta)


def reference_budgets(layers: int, length: int, budget: int, window: int, beta: float) -> list[int]:
    """The reference code's per-layer budgets, floor divisions included (needs ``L >= 2``, ``T > B``).

    >>> reference_budgets(32, 7500, 64, 8, 20)[:4], reference_budgets(32, 7500, 64, 8, 20)[-1]
    ([118, 115, 112, 109], 25)
    """
    room = budget - window
    if length < 2 * room:  # the reference's SnapKV branch: a uniform budget per layer
        return [budget] * layers
    low = room // beta  # `min_num`, floored
    high = 2 * room - low  # `max_num`
    if high >= length - window:
        high = length - window
        low = 2 * room - high
    step = (high - low) // (layers - 1)  # `steps`, floored: the source of the overshoot
    return [int(high - layer * step) + window for layer in range(layers)]


def conserved_budgets(layers: int, length: int, budget: int, window: int, beta: float) -> list[int]:
    """Integer budgets of the exact schedule summing to ``L * B`` (needs ``L >= 2``, ``B < T``, ``w <= B``).

    Computed in exact rational arithmetic; the ``L * B - sum(floor)`` leftover entries go to the
    layers with the largest fractional parts (ties to the shallower layer), which keeps the
    schedule non-increasing and every layer within ``[w, T]``.

    >>> budgets = conserved_budgets(32, 7500, 64, 8, 20)
    >>> sum(budgets) == 32 * 64, budgets[0], budgets[-1]
    (True, 117, 11)
    """
    room = Fraction(budget - window)
    low = room / Fraction(beta)
    high = 2 * room - low
    if high >= length - window:
        high = Fraction(length - window)
        low = 2 * room - high
    step = (high - low) / (layers - 1)
    targets = [window + high - layer * step for layer in range(layers)]  # exact, sum == L * B
    floors = [t.numerator // t.denominator for t in targets]
    leftover = layers * budget - sum(floors)
    order = sorted(range(layers), key=lambda layer: (-(targets[layer] - floors[layer]), layer))
    for layer in order[:leftover]:
        floors[layer] += 1
    return floors
