"""PyramidKV and SnapKV with NVIDIA/kvpress's default hyperparameters.

kvpress (``SnapKVPress``, ``PyramidKVPress``) uses a 64-token observation window kept inside the
budget, average pooling of width 5 and the *mean* of the window's attention rows. The budget keeps
this project's meaning (entries per layer, window included), so these presets need a budget of at
least 64 (the default 128 is fine).

What these presets share with kvpress is the *scoring* (window, pooling, reduction). The per-layer
budgets of ``pyramidkv-kvpress`` are this project's pyramid schedule (:mod:`kvpress_lab.allocators.pyramid`),
not kvpress's ``PyramidKVPress`` formula: a side-by-side run reported that kvpress builds its pyramid
over the kept count *including* the window and falls back to a uniform budget when its smallest layer
would drop below the window, so the two keep different per-layer counts. ``snapkv-kvpress`` kept the
same positions as ``SnapKVPress`` in that run. With ``compression_ratio``, the kept count is rounded
here and truncated in kvpress (see the budget semantics page of the docs).
"""

from __future__ import annotations

from kvpress_lab.presets import Preset

_KVPRESS_SCORER = {"kernel_size": 5, "pooling": "avg", "reduction": "mean"}

PYRAMIDKV_KVPRESS = Preset(
    name="pyramidkv-kvpress",
    description="PyramidKV with kvpress defaults: pyramid budgets (beta=20), W=64, avg pool 5, mean over the window",
    recipe={"allocator": "pyramid", "scorer": "snapkv_window", "window": 64,
            "allocator_kwargs": {"beta": 20, "rounding": "conserve"}, "scorer_kwargs": dict(_KVPRESS_SCORER)},
    paper="https://arxiv.org/abs/2406.02069",
)

SNAPKV_KVPRESS = Preset(
    name="snapkv-kvpress",
    description="SnapKV with kvpress defaults: uniform budget per layer, W=64, avg pool 5, mean over the window",
    recipe={"allocator": "uniform", "scorer": "snapkv_window", "window": 64, "scorer_kwargs": dict(_KVPRESS_SCORER)},
    paper="https://arxiv.org/abs/2404.14469",
)
