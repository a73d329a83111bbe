"""Query-agnostic presets: KeyDiff, LagKV, Compactor, CurDKV and Expected Attention.

These methods score the cache without the observation window's queries and, in kvpress, protect
no recent window of their own (LagKV's tail and Compactor's ``sink_size_end`` are protected by
their scores). Each preset is a uniform budget per layer with the scorer's kvpress defaults and
the smallest window this project allows (``W = 1``: the last prompt token), except Compactor, whose
window covers the 4 trailing tokens it protects (``sink_size_end``).
"""

from __future__ import annotations

from kvpress_lab.presets import Preset

__all__ = ["KEYDIFF", "LAGKV", "COMPACTOR", "CUR", "EXPECTED_ATTENTION"]

KEYDIFF = Preset(
    name="keydiff",
    description="KeyDiff: uniform budget per layer, keys least similar to the mean key kept (W=1)",
    recipe={"allocator": "uniform", "scorer": "keydiff", "window": 1},
    paper="https://arxiv.org/abs/2504.15364",
)

LAGKV = Preset(
    name="lagkv",
    description="LagKV: uniform budget per layer, lag-relative key/value statistics (lag 128, 4 sinks, W=1)",
    recipe={"allocator": "uniform", "scorer": "lagkv", "window": 1,
            "scorer_kwargs": {"num_sinks": 4, "lag_size": 128, "cross_scoring": False}},
    paper="https://arxiv.org/abs/2504.04704",
)

COMPACTOR = Preset(
    name="compactor",
    description="Compactor: uniform budget per layer, exact pre-RoPE leverage + scaled non-causal attention (blend 0.35, chunk 256, W=4)",
    recipe={"allocator": "uniform", "scorer": "compactor", "window": 4,
            "scorer_kwargs": {"blending": 0.35, "sink_size_start": 8, "sink_size_end": 4, "chunk_size": 256}},
    paper="https://arxiv.org/abs/2507.08143",
)

CUR = Preset(
    name="cur",
    description="CurDKV: uniform budget per layer, key x value CUR leverage in windows of 16 (4 sinks, W=1)",
    recipe={"allocator": "uniform", "scorer": "cur", "window": 1,
            "scorer_kwargs": {"num_sinks": 4, "leverage_type": "kv_product", "local_window_size": 16}},
    paper="https://arxiv.org/abs/2509.15038",
)

EXPECTED_ATTENTION = Preset(
    name="expected-attention",
    description="Expected Attention: uniform budget per layer, Gaussian model of future queries over 512 positions (4 sinks, W=1)",
    recipe={"allocator": "uniform", "scorer": "expected_attention", "window": 1,
            "scorer_kwargs": {"n_future_positions": 512, "num_sinks": 4, "use_covariance": True, "use_vnorm": True}},
    paper="https://arxiv.org/abs/2510.00636",
)
