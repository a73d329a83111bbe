"""Cell sizes in tables and plots: a budget (entries per layer) or a compression ratio.

A sweep's cell has a :class:`~kvpress_lab.recipe_labels.CacheSize`: a budget, a compression ratio
(kvpress's convention: the fraction of the prompt's entries removed) or neither. Result rows
record it as ``budget`` (``None`` for a ratio) and, for a ratio, ``compression_ratio``;
:func:`size_label` names either kind in tables and plots.

Examples
--------
>>> size_label({"budget": None, "compression_ratio": 0.75}), size_label({"budget": 64}), size_label({"budget": None})
('ratio 0.75', 64, None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["size_label"]


def size_label(row: Mapping[str, Any]) -> Any:
    """What tables show for a row's size: its budget, ``"ratio r"``, or ``None`` (the full cache)."""
    if row.get("budget") is not None:
        return row["budget"]
    ratio = row.get("compression_ratio")
    return None if ratio is None else f"ratio {ratio:g}"
