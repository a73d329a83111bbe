"""What the engine reads from a recipe: the fields of :class:`~kvpress_lab.Recipe` it runs on.

The engine stands below :class:`~kvpress_lab.Recipe` (whose ``apply`` and ``prefill`` call it),
so it never imports :mod:`kvpress_lab.recipe`, not even for annotations: it states here, as a
protocol, the part of a recipe it reads. ``Recipe`` satisfies it; so would any object with these
attributes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kvpress_lab.budgets import BudgetSpec
from kvpress_lab.protocols import Strategies

__all__ = ["EngineRecipe"]


@runtime_checkable
class EngineRecipe(Protocol):
    """The recipe fields the engine reads (see :class:`~kvpress_lab.Recipe` for their meaning)."""

    allocator: str
    scorer: str
    executor: str | None
    window: int
    head_allocation: str
    head_floor: float
    head_floor_rule: str
    preset_name: str | None
    decode_budget: int | None
    compress_every: int
    compress_prefill: bool
    rerotate_keys: bool
    decode_schedule: str
    block_size: int | None

    @property
    def strategies(self) -> Strategies:
        """The allocator, scorer and executor instances."""
        ...

    @property
    def budget_spec(self) -> BudgetSpec:
        """The budget numbers of the prefill."""
        ...

    @property
    def decode_spec(self) -> BudgetSpec | None:
        """The budget numbers of decoding-time compression, or ``None``."""
        ...
