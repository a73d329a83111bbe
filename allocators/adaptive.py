"""Adaptive allocation: split the total budget over layers by each prompt's own attention dispersion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch

from kvpress_lab.attention import attention_coverage, attention_entropy, window_attention, window_query_valid
from kvpress_lab.budgets import BudgetRequest, check_budget_request
from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_choice, check_float

__all__ = ["AdaptiveAllocator", "proportional_budgets", "weighted_layer_budgets", "cake_preference"]


@dataclass(frozen=True)
class AdaptiveAllocator:
    """Adaptive (CAKE-style): per-layer budgets proportional to the prompt's attention dispersion.

    Based on https://arxiv.org/abs/2503.12491 (CAKE: Cascading and Adaptive KV cache Eviction with
    Layer Preferences). At every full-attention layer the engine calls :meth:`layer_statistic` on
    the prefill's :class:`~kvpress_lab.LayerView`; after the last layer, :meth:`allocate` splits the
    total ``L * B`` entries across layers proportionally to those statistics (water-filling), with a
    floor and a cap per layer, and the total conserved exactly.

    Parameters
    ----------
    statistic : {"entropy", "coverage", "cake"}
        The layer's demand, computed on the attention of the window's queries over all keys
        (``(B, Hq, W, T)``, averaged over queries and heads). ``"entropy"`` (default): mean
        entropy in nats, a log-scale, gentle redistribution. ``"coverage"``: tokens holding 90% of
        the attention mass, in budget units (steep). ``"cake"``: CAKE's preference
        ``H^(1/tau1) * V^(1/tau2)``, entropy ``H`` of the window's attention over the prefix keys
        times ``V``, their variance across window queries (temporal shift), both summed as in CAKE's
        reference code (which sums over the batch too; here each row gets its own).
    floor : float
        Every layer keeps at least ``max(min(W, T), floor(floor * B))`` entries, ``floor`` in
        ``[0, 1]``. Default 0.2 (as AdaKV's head safeguard).
    tau1, tau2 : float
        CAKE's temperatures (> 0), used by ``statistic="cake"`` only. Default 1 (CAKE tunes them
        per model and budget, e.g. 1.6 and 0.4 for Llama-3.1-8B at 1024).

    Notes
    -----
    Peak memory: a ``"global"`` allocator needs every layer's statistic before any budget is known,
    so the engine keeps every layer's *full* cache until the end of the prefill forward pass (the
    peak of uncompressed prefill) plus ``(B, Hkv, T)`` float32 scores per layer; eviction happens
    after the last layer. Static allocators (``pyramid``, ``learned``) evict layer by layer.

    Examples
    --------
    >>> request = BudgetRequest(4, 2, 1000, 64, 8, layer_statistics=torch.tensor([4.0, 3.0, 2.0, 1.0]))
    >>> AdaptiveAllocator().allocate(request)
    [102, 77, 51, 26]
    """

    name: ClassVar[str] = "adaptive"
    needs_window: ClassVar[bool] = True  # its statistic reads the observation window's attention
    scope: ClassVar[str] = "global"
    statistic: str = "entropy"
    floor: float = 0.2
    tau1: float = 1.0
    tau2: float = 1.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "statistic", self.statistic, ("entropy", "coverage", "cake"))
        object.__setattr__(self, "floor", check_float(owner, "floor", self.floor, minimum=0.0, maximum=1.0))
        for field in ("tau1", "tau2"):
            object.__setattr__(self, field, check_float(owner, field, getattr(self, field), minimum=0.0, min_inclusive=False))

    def layer_statistic(self, view: LayerView) -> torch.Tensor:
        """This layer's demand for every row: ``(B,)`` float32, ``>= 0``, on ``view.device``."""
        probs = window_attention(view)  # (B, Hq, W, T)
        query_valid = window_query_valid(view)  # (B, W)
        if self.statistic == "entropy":
            return attention_entropy(probs, query_valid)
        if self.statistic == "coverage":
            return attention_coverage(probs, query_valid, 0.9)
        return cake_preference(probs[..., : view.seq_len - view.window], query_valid, self.tau1, self.tau2)

    def allocate(self, request: BudgetRequest) -> list[int]:
        """``L`` budgets (window included) in ``[max(min(W, T), floor * B), T]`` summing to ``L * B``."""
        layers = request.num_layers
        stats = request.layer_statistics
        if stats is None or tuple(stats.shape) != (layers,):
            got = None if stats is None else tuple(stats.shape)
            raise ValueError(f"AdaptiveAllocator (scope 'global') needs BudgetRequest.layer_statistics of shape "
                             f"(L,)=({layers},), got {got}.")
        return weighted_layer_budgets("AdaptiveAllocator", request, stats.tolist(), self.floor)


def weighted_layer_budgets(owner: str, request: BudgetRequest, weights: Sequence[float], floor: float) -> list[int]:
    """Split ``L * B`` over the layers in proportion to ``weights``: each in ``[max(min(W, T), floor * B), T]``.

    Shared by the allocators that weight layers (``adaptive``, ``learned``); every layer keeps
    the whole prompt when ``T <= B``.
    """
    layers, length, budget, window = check_budget_request(owner, request)
    if length <= budget:
        return [length] * layers
    low = max(min(window, length), math.floor(floor * budget))
    return proportional_budgets(weights, layers * budget, low, length)


def cake_preference(prefix_probs: torch.Tensor, query_valid: torch.Tensor, tau1: float, tau2: float) -> torch.Tensor:
    """CAKE's layer preference ``H^(1/tau1) * V^(1/tau2)`` per row: ``(B, Hq, W, T - W)`` -> ``(B,)`` float32.

    ``H``: entropy of the window's attention over the prefix keys, summed over heads, queries and
    keys; ``V``: variance over the real window queries of each key's attention, summed over heads
    and keys.
    """
    mask = query_valid[:, None, :, None].to(prefix_probs.dtype)  # (B, 1, W, 1)
    entropy = -(torch.special.xlogy(prefix_probs, prefix_probs) * mask).sum(dim=(1, 2, 3))  # (B,)
    count = query_valid.sum(dim=-1).to(prefix_probs.dtype)[:, None, None]  # (B, 1, 1)
    mean = (prefix_probs * mask).sum(dim=2) / count.clamp(min=1)  # (B, Hq, T - W)
    spread = (((prefix_probs - mean[:, :, None]) ** 2) * mask).sum(dim=2) / (count - 1).clamp(min=1)
    variance = spread.sum(dim=(1, 2))  # (B,)
    return entropy.clamp(min=0) ** (1 / tau1) * variance ** (1 / tau2)


def proportional_budgets(weights: Sequence[float], total: int, low: int, high: int) -> list[int]:
    """Integers in ``[low, high]`` summing to ``total``, proportional to ``weights`` where the bounds allow.

    Water-filling in exact rational arithmetic: find ``c`` with ``sum(clip(c * w_l, low, high)) ==
    total``, then round by largest remainders (ties to the shallower layer). Layers of weight 0 get
    ``low`` unless the others are all capped; all-zero weights split evenly. Needs
    ``L * low <= total <= L * high`` and finite weights ``>= 0``.

    >>> proportional_budgets([3.0, 1.0, 0.0], 12, 2, 8)
    [8, 2, 2]
    >>> proportional_budgets([1.0, 1.0, 1.0], 10, 0, 10)
    [4, 3, 3]
    """
    count = len(weights)
    if not count * low <= total <= count * high:
        raise ValueError(f"proportional_budgets: cannot split total={total} into {count} layers within [{low}, {high}].")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"Layer weights must be finite and >= 0, got {list(weights)}.")
    share = [Fraction(w) for w in weights]
    if sum(share) == 0:
        share = [Fraction(1)] * count
    fixed: dict[int, Fraction] = {}
    for _ in range(2 * count + 1):  # every pass fixes at least one layer at a bound, or finishes
        free = [layer for layer in range(count) if layer not in fixed]
        rest = total - sum(fixed.values())
        mass = sum(share[layer] for layer in free)
        if mass == 0:  # only zero-weight layers are left: split the rest evenly among them
            share = [Fraction(1) if layer in free else share[layer] for layer in range(count)]
            continue
        target = {layer: rest * share[layer] / mass for layer in free}
        clipped = {layer: min(max(value, Fraction(low)), Fraction(high)) for layer, value in target.items()}
        excess = sum(clipped.values()) - rest
        if excess == 0:
            fixed.update(clipped)
            break
        side = low if excess > 0 else high  # too much: lower-clipped layers stay at low; too little: capped stay at high
        fixed.update({layer: Fraction(side) for layer in free if clipped[layer] == side and target[layer] != side})
    else:  # pragma: no cover - unreachable: the water level is found in at most L passes
        raise RuntimeError(f"proportional_budgets did not converge for weights={list(weights)}; please report this bug.")
    exact = [fixed[layer] for layer in range(count)]
    budgets = [math.floor(value) for value in exact]
    order = sorted(range(count), key=lambda layer: (-(exact[layer] - budgets[layer]), layer))
    for layer in order[: total - sum(budgets)]:
        budgets[layer] += 1
    return budgets
