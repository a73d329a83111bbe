"""Uniform allocation: every layer keeps the same budget (SnapKV, H2O, StreamingLLM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kvpress_lab.budgets import BudgetRequest

__all__ = ["UniformAllocator"]


@dataclass(frozen=True)
class UniformAllocator:
    """Every layer keeps ``budget`` entries per KV head (all of them when ``T <= budget``).

    >>> UniformAllocator().allocate(BudgetRequest(num_layers=3, num_kv_heads=2, prompt_length=100, budget=16, min_kept=8))
    [16, 16, 16]
    """

    name: ClassVar[str] = "uniform"
    scope: ClassVar[str] = "static"

    def allocate(self, request: BudgetRequest) -> list[int]:
        """``L`` copies of ``min(budget, T)``."""
        return [min(request.budget, request.prompt_length)] * request.num_layers
