"""NVIDIA kvpress's presses as kvpress 0.5.5 computes them: one ``<press>-kvpress`` preset each.

Each preset is the recipe whose kept entries equal the press's, layer by layer and KV head by
KV head, with kvpress's defaults (measured side by side by ``python -m kvpress_lab.benchmarks.fidelity``;
the table is on the "Coming from kvpress" page). What they share:

* ``ratio_rounding="kvpress"``: a ratio becomes ``max(1, int(T * (1 - r)))`` entries, truncated;
* ``window``: what kvpress keeps whatever the scores, and nothing more: 64 for SnapKV-based
  presses (its window scores ``max + 1``), 1 for TOVA (the last token), 0 elsewhere (kvpress
  forces nothing; sinks are the scorer's own);
* ``executor_kwargs={"ties": "topk"}``: equal scores go where ``torch.topk`` sends them, as
  kvpress's ``ScorerPress`` selects (LagKV's rank scores tie by the hundred);
* each scorer's kvpress options, where kvpress's arithmetic differs from the paper's or this
  project's (named in each description and in the scorer's docstring).

kvpress takes no absolute budget; with ``budget=B`` these presets use ``B`` where kvpress uses
``T (1 - r)``. On prompts shorter than about ``64 / (1 - r)`` tokens kvpress keeps fewer entries
than its window; here every layer keeps at least the window
(:meth:`kvpress_lab.budgets.BudgetSpec.request`).
"""

from __future__ import annotations

from kvpress_lab.presets import Preset

__all__ = ["KVPRESS_FLAVOURS"]

_KVPRESS = {"ratio_rounding": "kvpress"}
_TOPK = {"executor_kwargs": {"ties": "topk"}}
#: kvpress's SnapKVPress: 64-token window, average pooling of width 5, mean over the window, window at max + 1.
_SNAPKV = {"kernel_size": 5, "pooling": "avg", "reduction": "mean", "pad_window": True}
#: kvpress's LeverageScorePress: pre-RoPE keys, centred, a 48-d Gaussian sketch from torch's global generator,
#: Cholesky solve with 1e-2 jitter.
_LEVERAGE = {"keys": "pre_rope", "centered": True, "sketch_dimension": 48, "seed": None, "solver": "cholesky"}
#: kvpress's NonCausalAttnPress: unscaled logits, the ragged last chunk zero-padded.
_NON_CAUSAL = {"scaled": False, "tail": "kvpress"}


def _flavour(name: str, description: str, recipe: dict, paper: str = "") -> Preset:
    return Preset(name=name, description=description, recipe={**_KVPRESS, **recipe}, paper=paper)


SNAPKV_KVPRESS = _flavour(
    "snapkv-kvpress", "kvpress's SnapKVPress: uniform budget, W=64, avg pool 5, mean over the window, ratio truncated",
    {"allocator": "uniform", "scorer": "snapkv_window", "window": 64, "scorer_kwargs": dict(_SNAPKV), **_TOPK},
    "https://arxiv.org/abs/2404.14469")
PYRAMIDKV_KVPRESS = _flavour(
    "pyramidkv-kvpress", "kvpress's PyramidKVPress: its per-layer formula (beta=20), W=64, avg pool 5, mean, ratio truncated",
    {"allocator": "pyramid_kvpress", "scorer": "snapkv_window", "window": 64, "allocator_kwargs": {"beta": 20},
     "scorer_kwargs": dict(_SNAPKV), **_TOPK},
    "https://arxiv.org/abs/2406.02069")
STREAMINGLLM_KVPRESS = _flavour(
    "streamingllm-kvpress", "kvpress's StreamingLLMPress: 4 sinks plus the most recent tokens, ratio truncated",
    {"allocator": "uniform", "scorer": "sink", "window": 0, "scorer_kwargs": {"num_sinks": 4}, **_TOPK},
    "https://arxiv.org/abs/2309.17453")
STREAMINGLLM_REROTATED_KVPRESS = _flavour(
    "streamingllm-rerotated-kvpress", "kvpress's KeyRerotationPress(StreamingLLMPress): the same kept set, keys re-rotated",
    {"allocator": "uniform", "scorer": "sink", "window": 0, "scorer_kwargs": {"num_sinks": 4}, "rerotate_keys": True,
     **_TOPK},
    "https://arxiv.org/abs/2309.17453")
KNORM_KVPRESS = _flavour(
    "knorm-kvpress", "kvpress's KnormPress: lowest key norms kept, nothing forced, torch.topk ties",
    {"allocator": "uniform", "scorer": "knorm", "window": 0, **_TOPK}, "https://arxiv.org/abs/2406.11430")
RANDOM_KVPRESS = _flavour(
    "random-kvpress", "kvpress's RandomPress(seed=0): every layer draws torch.rand from a generator seeded with seed",
    {"allocator": "uniform", "scorer": "random", "window": 0, "scorer_kwargs": {"seed": 0, "per_layer": False}, **_TOPK})
TOVA_KVPRESS = _flavour(
    "tova-kvpress", "kvpress's TOVAPress: the last query's attention averaged over all query heads, shared by KV heads",
    {"allocator": "uniform", "scorer": "tova", "window": 1, "scorer_kwargs": {"heads": "all"}, **_TOPK},
    "https://arxiv.org/abs/2401.06104")
OBSERVED_ATTENTION_KVPRESS = _flavour(
    "observed-attention-kvpress", "kvpress's ObservedAttentionPress: attention received per query that sees the entry",
    {"allocator": "uniform", "scorer": "h2o", "window": 0, "scorer_kwargs": {"normalization": "queries"}, **_TOPK},
    "https://arxiv.org/abs/2306.14048")
EXPECTED_ATTENTION_KVPRESS = _flavour(
    "expected-attention-kvpress", "kvpress's ExpectedAttentionPress: pre-RoPE query statistics, rotation averaged over 512 positions",
    {"allocator": "uniform", "scorer": "expected_attention", "window": 0,
     "scorer_kwargs": {"n_future_positions": 512, "num_sinks": 4, "use_covariance": True, "use_vnorm": True, "epsilon": 0.0},
     **_TOPK},
    "https://arxiv.org/abs/2510.00636")
KEYDIFF_KVPRESS = _flavour(
    "keydiff-kvpress", "kvpress's KeyDiffPress: keys least similar to the mean unit key, nothing forced",
    {"allocator": "uniform", "scorer": "keydiff", "window": 0, **_TOPK}, "https://arxiv.org/abs/2504.15364")
BLOCK_KEYDIFF_KVPRESS = _flavour(
    "block-keydiff-kvpress", "kvpress's BlockPress(KeyDiffPress, block_size=128): KeyDiff rescored block by block in one forward",
    {"allocator": "uniform", "scorer": "keydiff", "window": 0, "block_size": 128}, "https://arxiv.org/abs/2504.15364")
LAGKV_KVPRESS = _flavour(
    "lagkv-kvpress", "kvpress's LagKVPress: lag 128, 4 sinks scored (not forced), torch's argsort and topk ties",
    {"allocator": "uniform", "scorer": "lagkv", "window": 0,
     "scorer_kwargs": {"num_sinks": 4, "lag_size": 128, "cross_scoring": False, "force_sinks": False,
                       "rank_ties": "argsort"}, **_TOPK},
    "https://arxiv.org/abs/2504.04704")
NON_CAUSAL_KVPRESS = _flavour(
    "non-causal-kvpress", "kvpress's NonCausalAttnPress: chunks of 256, unscaled logits, zero-padded last chunk",
    {"allocator": "uniform", "scorer": "non_causal", "window": 0, "scorer_kwargs": {"chunk_size": 256, **_NON_CAUSAL},
     **_TOPK},
    "https://arxiv.org/abs/2507.08143")
LEVERAGE_KVPRESS = _flavour(
    "leverage-kvpress", "kvpress's LeverageScorePress: centred pre-RoPE keys, 48-d Gaussian sketch (torch's RNG), jitter 1e-2",
    {"allocator": "uniform", "scorer": "leverage", "window": 0, "scorer_kwargs": dict(_LEVERAGE), **_TOPK},
    "https://arxiv.org/abs/2507.08143")
COMPACTOR_KVPRESS = _flavour(
    "compactor-kvpress", "kvpress's CompactorPress: blending = ratio, kvpress's leverage and non-causal attention, ends at max",
    {"allocator": "uniform", "scorer": "compactor", "window": 0,
     "scorer_kwargs": {"blending": None, "sink_size_start": 8, "sink_size_end": 4, "chunk_size": 256, "protect": "max",
                       **_LEVERAGE, **_NON_CAUSAL}, **_TOPK},
    "https://arxiv.org/abs/2507.08143")
CUR_KVPRESS = _flavour(
    "cur-kvpress", "kvpress's CURPress: key x value leverage in windows of 16, 4 sinks, nothing else forced",
    {"allocator": "uniform", "scorer": "cur", "window": 0,
     "scorer_kwargs": {"num_sinks": 4, "leverage_type": "kv_product", "local_window_size": 16}, **_TOPK},
    "https://arxiv.org/abs/2509.15038")
KVZIP_KVPRESS = _flavour(
    "kvzip-kvpress", "kvpress's KVzipPress: chat-template prefix not reconstructed, one global ranking of every head's entries",
    {"allocator": "global_topk", "scorer": "kvzip", "executor": "ragged", "window": 0,
     "allocator_kwargs": {"split": "heads", "count": "kvpress"}, "scorer_kwargs": {"skip_prefix": "chat_template"}},
    "https://arxiv.org/abs/2505.23416")
ADAKV_KVPRESS = _flavour(
    "adakv-kvpress", "kvpress's AdaKVPress(SnapKVPress): per-head budgets, safeguard max(1, floor(0.2 k)) top entries per head",
    {"allocator": "uniform", "scorer": "snapkv_window", "window": 64, "scorer_kwargs": dict(_SNAPKV),
     "head_allocation": "adaptive", "head_floor": 0.2, "head_floor_rule": "kvpress"},
    "https://arxiv.org/abs/2407.11550")
CRITICALKV_KVPRESS = _flavour(
    "criticalkv-kvpress", "kvpress's CriticalKVPress(SnapKVPress): half of each budget by SnapKV, the rest by (s + 1e-4) ||W_o v||_1",
    {"allocator": "uniform", "scorer": "critical", "window": 64,
     "scorer_kwargs": {"base": "snapkv_window", "base_kwargs": dict(_SNAPKV), "epsilon": 1e-4, "first_stage_ratio": 0.5},
     **_TOPK},
    "https://arxiv.org/abs/2502.03805")
CRITICALADAKV_KVPRESS = _flavour(
    "criticaladakv-kvpress", "kvpress's CriticalAdaKVPress(SnapKVPress): heads split on SnapKV scores (safeguard 0.2), then CriticalKV",
    {"allocator": "uniform", "scorer": "critical", "window": 64,
     "scorer_kwargs": {"base": "snapkv_window", "base_kwargs": dict(_SNAPKV), "epsilon": 1e-4, "first_stage_ratio": 0.5,
                       "split_heads_on": "base"},
     "head_allocation": "adaptive", "head_floor": 0.2, "head_floor_rule": "kvpress"},
    "https://arxiv.org/abs/2502.03805")
CHUNKKV_KVPRESS = _flavour(
    "chunkkv-kvpress", "kvpress's ChunkKVPress(SnapKVPress, 20): int(chunks * (1 - ratio)) whole chunks, nothing else",
    {"allocator": "uniform", "scorer": "snapkv_window", "executor": "chunk", "window": 64, "scorer_kwargs": dict(_SNAPKV),
     "executor_kwargs": {"chunk_length": 20, "fill": False}},
    "https://arxiv.org/abs/2502.00299")
SNAPKV_MERGE_KVPRESS = _flavour(
    "snapkv-merge-kvpress", "kvpress's MergingPress(SnapKVPress): SnapKV's kept set, evicted values folded into the kept",
    {"allocator": "uniform", "scorer": "snapkv_window", "executor": "merge", "window": 64, "scorer_kwargs": dict(_SNAPKV),
     "executor_kwargs": {"similarity_threshold": 0.0}},
    "https://arxiv.org/abs/2406.13035")
DECODING_KNORM_KVPRESS = Preset(
    name="decoding-knorm-kvpress",
    description="kvpress's DecodingPress(KnormPress): every 512 decoding steps, cut to 2048 entries by key norm",
    recipe={"allocator": "uniform", "scorer": "knorm", "window": 0, "compress_prefill": False, "decode_budget": 2048,
            "compress_every": 512, "decode_schedule": "every", **_TOPK},
    paper="https://arxiv.org/abs/2406.11430",
)

#: Every ``*-kvpress`` preset, in the order of the "Coming from kvpress" page.
KVPRESS_FLAVOURS: tuple[Preset, ...] = (
    SNAPKV_KVPRESS, PYRAMIDKV_KVPRESS, STREAMINGLLM_KVPRESS, STREAMINGLLM_REROTATED_KVPRESS, KNORM_KVPRESS,
    RANDOM_KVPRESS, TOVA_KVPRESS, OBSERVED_ATTENTION_KVPRESS, EXPECTED_ATTENTION_KVPRESS, KEYDIFF_KVPRESS,
    BLOCK_KEYDIFF_KVPRESS, LAGKV_KVPRESS, NON_CAUSAL_KVPRESS, LEVERAGE_KVPRESS, COMPACTOR_KVPRESS, CUR_KVPRESS,
    KVZIP_KVPRESS, ADAKV_KVPRESS, CRITICALKV_KVPRESS, CRITICALADAKV_KVPRESS, CHUNKKV_KVPRESS, SNAPKV_MERGE_KVPRESS,
    DECODING_KNORM_KVPRESS,
)
