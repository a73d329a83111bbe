"""SnapKV: a uniform budget per layer, scored by the observation window."""

from kvpress_lab.presets import Preset

SNAPKV = Preset(
    name="snapkv",
    description="SnapKV: uniform budget per layer, observation-window scoring (W=8, max pool 7)",
    recipe={"allocator": "uniform", "scorer": "snapkv_window", "window": 8,
            "scorer_kwargs": {"kernel_size": 7, "pooling": "max", "reduction": "sum"}},
    paper="https://arxiv.org/abs/2404.14469",
)
