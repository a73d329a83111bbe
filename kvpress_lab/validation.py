"""Small validators used by strategies' ``__post_init__`` and by :class:`~kvpress_lab.Recipe`.

Each raises :class:`TypeError` for a value of the wrong type and :class:`ValueError` for a value
out of range, naming the owner, the field, the expected range and the value received.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

__all__ = ["NAME_PATTERN", "check_int", "check_float", "check_choice", "check_bool"]

#: What every registered name (strategy or preset) must match: lower case, digits, ``_`` and ``-``.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_\-]*$")


def _where(owner: str, field: str) -> str:
    return f"{owner}.{field}" if owner else field


def check_int(
    owner: str, field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Validate an integer field and return it.

    >>> check_int("SinkScorer", "num_sinks", 4, minimum=0)
    4
    >>> check_int("SinkScorer", "num_sinks", -1, minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: SinkScorer.num_sinks must be an integer >= 0, got -1.
    """
    where = _where(owner, field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where} must be an integer, got {value!r} of type {type(value).__name__}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{where} must be an integer {_range(minimum, maximum)}, got {value!r}.")
    return value


def check_float(
    owner: str,
    field: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Validate a finite real field (ints accepted) and return it as ``float``.

    >>> check_float("Recipe", "compression_ratio", 0.5, minimum=0.0, maximum=1.0, max_inclusive=False)
    0.5
    """
    where = _where(owner, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number, got {value!r} of type {type(value).__name__}.")
    value = float(value)
    too_low = minimum is not None and (value < minimum or (not min_inclusive and value == minimum))
    too_high = maximum is not None and (value > maximum or (not max_inclusive and value == maximum))
    if not math.isfinite(value) or too_low or too_high:
        lo = "" if minimum is None else f"{'>=' if min_inclusive else '>'} {minimum}"
        hi = "" if maximum is None else f"{'<=' if max_inclusive else '<'} {maximum}"
        bounds = " and ".join(b for b in (lo, hi) if b) or "finite"
        raise ValueError(f"{where} must be a number {bounds}, got {value!r}.")
    return value


def check_choice(owner: str, field: str, value: Any, choices: Collection[str]) -> str:
    """Validate that ``value`` is one of ``choices``.

    >>> check_choice("SnapKVWindowScorer", "pooling", "avg", ("avg", "max"))
    'avg'
    """
    kinds = tuple({type(c) for c in choices})
    # 8.0 == 8 and True == 1: a value of another type that compares equal would fail later, far from here
    same_kind = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
    if value not in choices or not same_kind:
        listing = ", ".join(repr(c) for c in choices)
        kind = f" of type {type(value).__name__}" if value in choices else ""  # equal to a choice, but not one
        raise ValueError(f"{_where(owner, field)} must be one of {listing}, got {value!r}{kind}.")
    return value


def check_bool(owner: str, field: str, value: Any) -> bool:
    """Validate a boolean field."""
    if not isinstance(value, bool):
        raise TypeError(f"{_where(owner, field)} must be True or False, got {value!r}.")
    return value


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {maximum}]"
    if minimum is not None:
        return f">= {minimum}"
    if maximum is not None:
        return f"<= {maximum}"
    return ""
