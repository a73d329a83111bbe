"""Per-row layer budgets for one prefill: allocator calls and their validation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvpress_lab.protocols import BudgetRequest
from kvpress_lab.recipe import Recipe

__all__ = ["BudgetPlan", "plan_budgets"]


@dataclass(frozen=True)
class BudgetPlan:
    """Entries to keep per row and compressible layer.

    Parameters
    ----------
    real_lengths : list[int]
        ``n_b``, real (unpadded) tokens of each row.
    keep : torch.Tensor
        ``(B, L)`` int64 on the CPU, ``<= n_b``: entries each row keeps in each compressible layer.
    budgets : list[list[int]]
        The allocator's raw per-layer budgets for each row (before clamping to ``n_b``).
    """

    real_lengths: list[int]
    keep: torch.Tensor
    budgets: list[list[int]]

    def evicts(self, ordinal: int) -> bool:
        """Whether any row drops entries in compressible layer ``ordinal``."""
        return any(int(self.keep[b, ordinal]) < n for b, n in enumerate(self.real_lengths))


def plan_budgets(
    recipe: Recipe, valid: torch.Tensor, num_layers: int, num_kv_heads: int, statistics: torch.Tensor | None = None
) -> BudgetPlan:
    """Ask the recipe's allocator for every row's per-layer budgets.

    Parameters
    ----------
    recipe : Recipe
        The recipe being applied.
    valid : torch.Tensor
        ``(B, T)`` bool, ``False`` on left padding.
    num_layers : int
        ``L``, compressible layers.
    num_kv_heads : int
        ``Hkv``.
    statistics : torch.Tensor or None
        ``(B, L)`` float32 per-layer statistics for allocators of scope ``"global"``.
    """
    allocator = recipe.strategies.allocator
    real_lengths = [int(n) for n in valid.sum(dim=-1).tolist()]
    per_row: dict[tuple[int, int], list[int]] = {}
    for row, n in enumerate(real_lengths):
        key = (n, row if statistics is not None else -1)  # static budgets depend on the length only
        if key in per_row:
            continue
        budget = recipe.resolve_budget(n)
        window = min(recipe.minimum_budget, n)  # the window plus forced entries (sinks) must fit every layer
        if budget < recipe.minimum_budget and n > budget:
            raise ValueError(
                f"compression_ratio={recipe.compression_ratio} leaves a budget of {budget} entries for a prompt of {n} "
                f"tokens, below the {recipe.minimum_budget} entries always kept (observation window of {recipe.window}"
                " plus the scorer's forced entries). Use a smaller ratio, a smaller window, or an absolute budget."
            )
        stats = None if statistics is None else statistics[row].detach().float().cpu()
        request = BudgetRequest(num_layers, num_kv_heads, n, budget, window, stats)
        per_row[key] = _checked(allocator.allocate(request), request, allocator.name)
    budgets = [per_row[(n, row if statistics is not None else -1)] for row, n in enumerate(real_lengths)]
    keep = torch.tensor([[min(b, n) for b in row] for row, n in zip(budgets, real_lengths)], dtype=torch.int64)
    return BudgetPlan(real_lengths=real_lengths, keep=keep.reshape(len(real_lengths), num_layers), budgets=budgets)


def _checked(budgets: object, request: BudgetRequest, name: str) -> list[int]:
    if not isinstance(budgets, (list, tuple)) or len(budgets) != request.num_layers:
        raise ValueError(
            f"Allocator {name!r} must return {request.num_layers} per-layer budgets, got {budgets!r}."
        )
    floor = min(request.window, request.prompt_length)
    out = []
    for layer, value in enumerate(budgets):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Allocator {name!r} returned a non-integer budget {value!r} for layer {layer}.")
        if value < floor:
            raise ValueError(
                f"Allocator {name!r} gave layer {layer} a budget of {value}, below min(window, T)={floor}; "
                "the observation window must fit in every layer."
            )
        out.append(int(value))
    return out
