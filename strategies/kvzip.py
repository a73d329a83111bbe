"""KVzip presets: context-reconstruction scores, budgets by one global ranking or by a threshold.

``kvzip`` follows kvpress's ``KVzipPress`` defaults (``n_sink=4``, our ``num_sinks``; chunks of 2048 tokens,
``layerwise=False``): the ``kvzip`` scorer, the ``global_topk`` allocator (one ranking of every
entry of every layer) and a per-head split of each layer's budget by one ranking across its heads
(``head_allocation="adaptive"`` with no safeguard, ``head_floor=0``: kvpress's per-layer bottom-k
over all heads). KVzip protects no recent window; the project's smallest one is ``W = 1``.

``kvzip-threshold`` is the threshold variant (DMS and kvpress's ``ThresholdPress`` decide per entry
with a threshold; kvpress pairs its ``ThresholdPress`` with KVzap, a fast approximation of
KVzip): every entry whose KVzip score (a maximum attention probability) exceeds the threshold is
kept, so the budget follows each input; ``budget`` / ``compression_ratio`` are not used. It is
named after what it runs, not after DMS, whose scores come from a trained eviction head. The
threshold 0.01 is this project's choice, not a published default: on the embedded SmolLM2-135M
with a 256-token prompt of source code, 48% of the KVzip scores exceed 0.01 (0.02: 34%, 0.05: 21%,
0.1: 15%), so it keeps about half the cache there; other models and inputs spend differently.
"""

from __future__ import annotations

from kvpress_lab.presets import Preset

__all__ = ["KVZIP", "KVZIP_THRESHOLD"]

KVZIP = Preset(
    name="kvzip",
    description="KVzip: context-reconstruction scores, one global ranking over layers and heads (4 sinks, chunks "
                "of 2048, W=1); about 2x prefill time",
    recipe={"allocator": "global_topk", "scorer": "kvzip", "window": 1, "head_allocation": "adaptive",
            "head_floor": 0.0, "scorer_kwargs": {"num_sinks": 4, "chunk_size": 2048, "prev_postfix_size": 8}},
    paper="https://arxiv.org/abs/2505.23416",
)

KVZIP_THRESHOLD = Preset(
    name="kvzip-threshold",
    description="KVzip scores with a threshold: keep every entry whose score exceeds 0.01, per-input budgets "
                "(budget/ratio unused; 4 sinks, W=1)",
    recipe={"allocator": "threshold", "scorer": "kvzip", "window": 1, "head_allocation": "adaptive",
            "head_floor": 0.0, "allocator_kwargs": {"threshold": 0.01, "normalise": "none"},
            "scorer_kwargs": {"num_sinks": 4, "chunk_size": 2048, "prev_postfix_size": 8}},
    paper="https://arxiv.org/abs/2505.23416",
)
