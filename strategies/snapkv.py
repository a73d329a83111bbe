"""SnapKV: a uniform budget per layer, scored by the observation window."""

from __future__ import annotations

from kvpress_lab.presets import Preset

__all__ = ["SNAPKV", "PAPER_SNAPKV_SCORER"]

#: The PyramidKV paper's SnapKV scoring (its LongBench runs): max pooling of width 7 over the
#: window's summed attention. Shared by every preset built on SnapKV scoring with ``window=8``.
PAPER_SNAPKV_SCORER = {"kernel_size": 7, "pooling": "max", "reduction": "sum"}

SNAPKV = Preset(
    name="snapkv",
    description="SnapKV: uniform budget per layer, observation-window scoring (W=8, max pool 7)",
    recipe={"allocator": "uniform", "scorer": "snapkv_window", "window": 8, "scorer_kwargs": dict(PAPER_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2404.14469",
)
