"""H2O: a uniform budget per layer, scored by attention accumulated over the whole prompt."""

from __future__ import annotations

from kvpress_lab.presets import Preset

H2O = Preset(
    name="h2o",
    description="H2O: uniform budget per layer, heavy hitters by attention summed over all prompt queries (W=8)",
    recipe={"allocator": "uniform", "scorer": "h2o", "window": 8},
    paper="https://arxiv.org/abs/2306.14048",
)
