"""Cell sizes: a budget (entries per layer) or a compression ratio, in one sweep.

A cell's ``budget`` slot holds a budget (``int``), ``None`` for the full cache, or a ratio key
such as ``"r0.5"`` for a recipe built with ``compression_ratio=0.5`` (kvpress's convention: the
fraction of the prompt's entries removed), so ratio cells and budget cells have distinct keys
(``snapkv|r0.5|...`` vs ``snapkv|64|...``). Ratio rows carry ``budget: None`` and
``compression_ratio``; :func:`size_label` names either kind in tables and plots.

Examples
--------
>>> ratio_key(0.5), parse_ratio_key("r0.5"), parse_ratio_key(64)
('r0.5', 0.5, None)
>>> size_label({"budget": None, "compression_ratio": 0.75}), size_label({"budget": 64}), size_label({"budget": None})
('ratio 0.75', 64, None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ratio_key", "parse_ratio_key", "size_fields", "size_label"]


def ratio_key(ratio: float) -> str:
    """The ``budget`` slot of a cell of compression ratio ``ratio``: ``"r0.5"``."""
    return f"r{float(ratio):g}"


def parse_ratio_key(size: Any) -> float | None:
    """``"r0.5" -> 0.5``; anything else (a budget, ``None``) -> ``None``."""
    if isinstance(size, str) and size.startswith("r"):
        return float(size[1:])
    return None


def size_fields(size: Any) -> dict[str, Any]:
    """Row fields of a cell's ``budget`` slot: ``{"budget": None, "compression_ratio": r}`` for a ratio key, else ``{}``."""
    ratio = parse_ratio_key(size)
    return {} if ratio is None else {"budget": None, "compression_ratio": ratio}


def size_label(row: Mapping[str, Any]) -> Any:
    """What tables show for a row's size: its budget, ``"ratio r"``, or ``None`` (the full cache)."""
    if row.get("budget") is not None:
        return row["budget"]
    ratio = row.get("compression_ratio")
    return None if ratio is None else f"ratio {ratio:g}"
