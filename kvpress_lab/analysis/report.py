"""The result of :func:`~kvpress_lab.analysis.attention_funnel`: per-layer lists, JSON round trip, a table."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FunnelReport"]


@dataclass(frozen=True)
class FunnelReport:
    """Per-layer attention statistics of a prompt's observation window.

    Parameters
    ----------
    model : str
        The model's name or path (``config._name_or_path``).
    layers : list[int]
        Model indices of the full-attention layers measured, ``L`` of them.
    window : int
        ``W``, the number of last prompt queries measured.
    mass : float
        Attention mass of the coverage statistic (0.9: "tokens holding 90% of the mass").
    prompt_lengths : list[int]
        Real (unpadded) tokens of each batch row.
    entropy : list[float]
        ``L`` mean entropies in nats (over window queries, heads, then batch rows).
    coverage : list[float]
        ``L`` mean numbers of keys holding ``mass`` of a query's attention.
    coverage_fraction : list[float]
        ``coverage`` divided by each row's real length, then averaged over rows (in ``(0, 1]``).

    Examples
    --------
    >>> report = FunnelReport("m", [0, 1], 8, 0.9, [100], [3.0, 1.5], [40.0, 5.0], [0.4, 0.05])
    >>> FunnelReport.from_json(report.to_json()) == report
    True
    >>> report.depth_trend("entropy")
    -1.0
    """

    model: str
    layers: list[int]
    window: int
    mass: float
    prompt_lengths: list[int]
    entropy: list[float]
    coverage: list[float]
    coverage_fraction: list[float]

    def __post_init__(self) -> None:
        sizes = {name: len(getattr(self, name)) for name in ("layers", "entropy", "coverage", "coverage_fraction")}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"FunnelReport needs one value per layer in every list, got lengths {sizes}.")

    @property
    def num_layers(self) -> int:
        """``L``."""
        return len(self.layers)

    def depth_trend(self, statistic: str = "entropy") -> float:
        """Spearman rank correlation of ``statistic`` with depth: ``-1`` is a perfect funnel, ``nan`` for ``L < 2``."""
        values = getattr(self, statistic)
        if len(values) < 2:
            return math.nan
        ranks = _ranks(values)
        depth = list(range(len(values)))
        return _pearson(depth, ranks)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FunnelReport:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def to_json(self, **dumps_kwargs: Any) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), **dumps_kwargs)

    @classmethod
    def from_json(cls, text: str) -> FunnelReport:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def table(self) -> str:
        """A text table, one line per layer."""
        pct = round(100 * self.mass)
        lines = [f"{'layer':>5}  {'entropy (nats)':>14}  {f'tokens for {pct}%':>15}  {'fraction':>8}"]
        for idx, h, c, f in zip(self.layers, self.entropy, self.coverage, self.coverage_fraction):
            lines.append(f"{idx:>5}  {h:>14.3f}  {c:>15.1f}  {f:>8.3f}")
        return "\n".join(lines)


def _ranks(values: list[float]) -> list[float]:
    """Ranks with ties averaged (1-based)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for position in range(start, stop + 1):
            ranks[order[position]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan
