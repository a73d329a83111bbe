"""PyramidKV and SnapKV as NVIDIA kvpress computes them (``PyramidKVPress``, ``SnapKVPress``).

kvpress uses a 64-token observation window kept inside the budget, average pooling of width 5 and
the *mean* of the window's attention rows; a ``compression_ratio`` becomes a count by truncation,
``max(1, int(T * (1 - r)))`` (``ratio_rounding="kvpress"``), and ``PyramidKVPress`` computes its
per-layer counts with its own formula (allocator ``pyramid_kvpress``, see
:mod:`kvpress_lab.allocators.pyramid_kvpress`), which is not the reference code's schedule that
``pyramidkv`` follows. With ``compression_ratio`` these presets keep exactly kvpress's per-layer counts
(pinned by ``tests/strategies/test_kvpress_fidelity.py``); a side-by-side run against kvpress 0.5.5
found ``SnapKVPress``'s kept positions identical to ``snapkv-kvpress``'s. kvpress takes no absolute
budget; with ``budget=B`` these presets use ``B`` where kvpress uses ``T (1 - r)``.

Where they still differ: kvpress keeps fewer entries than its window on prompts shorter than about
``64 / (1 - r)`` tokens; here every layer keeps at least the window (:meth:`kvpress_lab.budgets.BudgetSpec.request`).
"""

from __future__ import annotations

from kvpress_lab.presets import Preset

_KVPRESS_SCORER = {"kernel_size": 5, "pooling": "avg", "reduction": "mean"}

PYRAMIDKV_KVPRESS = Preset(
    name="pyramidkv-kvpress",
    description="kvpress's PyramidKVPress: its per-layer formula (beta=20), ratio truncated, W=64, avg pool 5, mean over the window",
    recipe={"allocator": "pyramid_kvpress", "scorer": "snapkv_window", "window": 64, "ratio_rounding": "kvpress",
            "allocator_kwargs": {"beta": 20}, "scorer_kwargs": dict(_KVPRESS_SCORER)},
    paper="https://arxiv.org/abs/2406.02069",
)

SNAPKV_KVPRESS = Preset(
    name="snapkv-kvpress",
    description="kvpress's SnapKVPress: uniform budget per layer, ratio truncated, W=64, avg pool 5, mean over the window",
    recipe={"allocator": "uniform", "scorer": "snapkv_window", "window": 64, "ratio_rounding": "kvpress",
            "scorer_kwargs": dict(_KVPRESS_SCORER)},
    paper="https://arxiv.org/abs/2404.14469",
)
