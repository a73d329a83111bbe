"""Per-head and adaptive variants: AdaKV head splits, adaptive (CAKE-style) and learned layer budgets.

Each preset changes one axis of its baseline and keeps the rest, so comparisons isolate it:
``adakv`` is ``snapkv`` with AdaKV's per-head split; ``pyramid-adakv`` is ``pyramidkv`` with it;
``adaptive`` and ``learned`` are ``snapkv`` with per-layer budgets from attention statistics
(per prompt, or from an offline profile). All use the PyramidKV paper's SnapKV scoring: window 8,
max pooling of width 7, window attention summed. AdaKV's own code uses a 32-token window: one
override away (``Recipe.preset("adakv", window=32)``).
"""

from __future__ import annotations

from kvpress_lab.presets import Preset

__all__ = ["ADAKV", "PYRAMID_ADAKV", "ADAPTIVE", "LEARNED"]

_SNAPKV_SCORER = {"kernel_size": 7, "pooling": "max", "reduction": "sum"}

ADAKV = Preset(
    name="adakv",
    description="AdaKV: uniform layer budgets split across KV heads by a top-k over all heads (floor 0.2), W=8, max pool 7",
    recipe={"allocator": "uniform", "scorer": "snapkv_window", "window": 8, "head_allocation": "adaptive",
            "head_floor": 0.2, "scorer_kwargs": dict(_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2407.11550",
)

PYRAMID_ADAKV = Preset(
    name="pyramid-adakv",
    description="PyramidKV layer budgets (beta=20) split across KV heads AdaKV-style (floor 0.2), W=8, max pool 7",
    recipe={"allocator": "pyramid", "scorer": "snapkv_window", "window": 8, "head_allocation": "adaptive",
            "head_floor": 0.2, "allocator_kwargs": {"beta": 20, "rounding": "conserve"},
            "scorer_kwargs": dict(_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2407.11550",
)

ADAPTIVE = Preset(
    name="adaptive",
    description="Adaptive (CAKE-style): layer budgets proportional to each prompt's window-attention entropy, W=8, max pool 7",
    recipe={"allocator": "adaptive", "scorer": "snapkv_window", "window": 8,
            "allocator_kwargs": {"statistic": "entropy", "floor": 0.2}, "scorer_kwargs": dict(_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2503.12491",
)

LEARNED = Preset(
    name="learned",
    description="Learned: layer budgets from the shipped SmolLM2-135M-Instruct entropy profile, W=8, max pool 7",
    recipe={"allocator": "learned", "scorer": "snapkv_window", "window": 8,
            "allocator_kwargs": {"profile": "smollm2-135m-instruct", "floor": 0.2}, "scorer_kwargs": dict(_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2406.02069",
)
