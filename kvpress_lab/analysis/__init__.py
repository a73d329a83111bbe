"""Attention analysis: the per-layer "attention funnel" behind pyramid and adaptive budgets.

Nothing is loaded or patched at import; matplotlib is imported only by :func:`plot_funnel`.

Examples
--------
>>> report = attention_funnel(model, input_ids, window=32)   # doctest: +SKIP
>>> print(report.table())                                   # doctest: +SKIP
>>> plot_funnel(report, "funnel.png")                       # doctest: +SKIP
"""

from __future__ import annotations

from kvpress_lab.analysis.funnel import (
    attention_coverage,
    attention_entropy,
    attention_funnel,
    layer_entropy,
    mass_coverage,
)
from kvpress_lab.analysis.plot import plot_funnel
from kvpress_lab.analysis.report import FunnelReport
from kvpress_lab.analysis.synthetic import synthetic_prompts, synthetic_text

__all__ = [
    "FunnelReport",
    "attention_funnel",
    "attention_entropy",
    "attention_coverage",
    "layer_entropy",
    "mass_coverage",
    "plot_funnel",
    "synthetic_prompts",
    "synthetic_text",
]
