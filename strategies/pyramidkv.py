"""PyramidKV: pyramid allocation over layers, observation-window scoring."""

from __future__ import annotations

from kvpress_lab.presets import Preset

PYRAMIDKV = Preset(
    name="pyramidkv",
    description="PyramidKV: pyramid budgets (beta=20, budget conserved), observation-window scoring (W=8, max pool 7)",
    recipe={"allocator": "pyramid", "scorer": "snapkv_window", "window": 8,
            "allocator_kwargs": {"beta": 20, "rounding": "conserve"},
            "scorer_kwargs": {"kernel_size": 7, "pooling": "max", "reduction": "sum"}},
    paper="https://arxiv.org/abs/2406.02069",
)
