"""AdaKV: per-head budget splits on top of SnapKV and PyramidKV.

``adakv`` is ``snapkv`` with AdaKV's per-head split; ``pyramid-adakv`` is ``pyramidkv`` with it,
so comparisons isolate the head axis. Both use the PyramidKV paper's SnapKV scoring (window 8,
max pooling of width 7, window attention summed). AdaKV's own code uses a 32-token window: one
override away (``Recipe.preset("adakv", window=32)``).
"""

from __future__ import annotations

from kvpress_lab.presets import Preset
from kvpress_lab.strategies.snapkv import PAPER_SNAPKV_SCORER

__all__ = ["ADAKV", "PYRAMID_ADAKV"]

ADAKV = Preset(
    name="adakv",
    description="AdaKV: uniform layer budgets split across KV heads by a top-k over all heads (floor 0.2), W=8, max pool 7",
    recipe={"allocator": "uniform", "scorer": "snapkv_window", "window": 8, "head_allocation": "adaptive",
            "head_floor": 0.2, "scorer_kwargs": dict(PAPER_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2407.11550",
)

PYRAMID_ADAKV = Preset(
    name="pyramid-adakv",
    description="PyramidKV layer budgets (beta=20) split across KV heads AdaKV-style (floor 0.2), W=8, max pool 7",
    recipe={"allocator": "pyramid", "scorer": "snapkv_window", "window": 8, "head_allocation": "adaptive",
            "head_floor": 0.2, "allocator_kwargs": {"beta": 20, "rounding": "conserve"},
            "scorer_kwargs": dict(PAPER_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2407.11550",
)
