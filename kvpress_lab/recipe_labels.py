"""From a recipe label to a :class:`~kvpress_lab.Recipe`: the one place, for Python, the CLI and the benchmarks.

A sweep, a command line or a script names what to run by a *label* (a preset name, or
:data:`FULL` for the uncompressed cache), a :class:`CacheSize` (a budget, a compression ratio,
or neither) and overrides of recipe fields; :func:`recipe_for` turns the three into a recipe
through :meth:`Recipe.preset <kvpress_lab.Recipe.preset>`, whose override rules are the same
everywhere.

Result files record a cell's size in one slot, as before: the budget (``64``), ``None`` (the full
cache, or a preset that keeps what its scores say), or a ratio key (``"r0.5"``, kvpress's
compression ratio: the fraction of entries removed); :meth:`CacheSize.parse` reads that slot back.
This module imports no torch (the command line plans its cells before anything heavy loads).

Examples
--------
>>> CacheSize(budget=64).key, CacheSize(ratio=0.5).key, CacheSize().key
('64', 'r0.5', '-')
>>> CacheSize.parse("r0.5") == CacheSize(ratio=0.5), CacheSize.parse(64).value
(True, 64)
>>> recipe_for("snapkv", CacheSize(ratio=0.5), window=4).compression_ratio, recipe_for(FULL) is None
(0.5, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvpress_lab.capabilities import ALLOCATOR
from kvpress_lab.errors import UnknownStrategyError
from kvpress_lab.registry import get_registry

if TYPE_CHECKING:
    from kvpress_lab.recipe import Recipe

__all__ = ["FULL", "CacheSize", "recipe_for", "budget_free"]

#: The label of the uncompressed cache (no recipe); it runs once, without a size.
FULL = "full"


@dataclass(frozen=True)
class CacheSize:
    """How much a recipe keeps: a budget (entries per layer and KV head), a compression ratio, or neither.

    Parameters
    ----------
    budget : int or None
        Entries kept per layer on average, ``>= 1``.
    ratio : float or None
        Fraction of the prompt's entries removed, in ``[0, 1)`` (``Recipe.compression_ratio``).
    """

    budget: int | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and self.ratio is not None:
            raise ValueError(f"A cache size is a budget or a ratio, not both; got budget={self.budget}, ratio={self.ratio}.")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"A cache size's budget must be an integer >= 1, got {self.budget!r}.")
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 <= self.ratio < 1.0 \
                    or math.isnan(self.ratio):
                raise ValueError(f"A cache size's ratio must be a number in [0, 1), got {self.ratio!r}.")
            object.__setattr__(self, "ratio", float(self.ratio))

    @classmethod
    def parse(cls, value: Any) -> CacheSize:
        """The size a result file's slot records: ``64``, ``"r0.5"`` or ``None``.

        Raises
        ------
        ValueError
            Anything else, naming the accepted forms.
        """
        if value is None:
            return cls()
        if isinstance(value, str) and value.startswith("r"):
            try:
                return cls(ratio=float(value[1:]))
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return cls(budget=value)
        raise ValueError(f"a cell size is a budget (an integer >= 1), a ratio key such as 'r0.5', or None; got {value!r}.")

    @property
    def value(self) -> int | str | None:
        """What a result file records in the cell's ``budget`` slot: the budget, ``"r<ratio>"`` or ``None``."""
        if self.ratio is not None:
            return f"r{self.ratio:g}"
        return self.budget

    @property
    def key(self) -> str:
        """The size's part of a cell key: ``"64"``, ``"r0.5"``, or ``"-"`` for no size."""
        return "-" if self.value is None else str(self.value)

    def recipe_fields(self) -> dict[str, Any]:
        """The :class:`~kvpress_lab.Recipe` fields of this size: ``budget`` or ``compression_ratio`` (none for no size)."""
        if self.ratio is not None:
            return {"compression_ratio": self.ratio}
        return {} if self.budget is None else {"budget": self.budget}

    def row_fields(self) -> dict[str, Any]:
        """A result row's size fields: ``{"budget": b}``, or ``{"budget": None, "compression_ratio": r}``."""
        if self.ratio is not None:
            return {"budget": None, "compression_ratio": self.ratio}
        return {"budget": self.budget}


def budget_free(label: str) -> bool:
    """Whether ``label`` runs without a size: :data:`FULL`, or a preset whose allocator declares ``uses_budget = False``
    (``threshold``: each row keeps what scores above it). An unknown label is not (it fails when built, with suggestions)."""
    if label == FULL:
        return True
    registry = get_registry()
    try:
        allocator = registry.get("preset", label).obj.recipe.get("allocator", "uniform")
        return not ALLOCATOR.of(registry.get("allocator", allocator).obj, "uses_budget")
    except UnknownStrategyError:
        return False


def recipe_for(label: str, size: CacheSize = CacheSize(), **overrides: Any) -> Recipe | None:
    """The recipe of ``label`` at ``size`` with ``overrides`` (:meth:`Recipe.preset <kvpress_lab.Recipe.preset>`),
    or ``None`` for :data:`FULL`.

    Raises
    ------
    UnknownStrategyError
        An unknown preset name, with suggestions.
    ValueError, TypeError
        A size or an override the preset cannot take.
    """
    if label == FULL:
        return None
    from kvpress_lab.recipe import Recipe  # torch: imported when a recipe is built, not with the labels

    return Recipe.preset(label, **size.recipe_fields(), **overrides)
