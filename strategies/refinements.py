"""Presets of the refinement methods: CriticalKV, ChunkKV, merge-on-evict and StreamingLLM with re-rotated keys."""

from __future__ import annotations

from kvpress_lab.presets import Preset

__all__ = ["CRITICALKV", "CHUNKKV", "SNAPKV_MERGE", "STREAMINGLLM_REROTATED"]

CRITICALKV = Preset(
    name="criticalkv",
    description="CriticalKV: SnapKV scores x ||W_o v||_1, half of each budget by SnapKV first (eps 1e-4, W=8)",
    recipe={"allocator": "uniform", "scorer": "critical", "window": 8,
            "scorer_kwargs": {"base": "snapkv_window", "base_kwargs": {"kernel_size": 7, "pooling": "max"},
                              "epsilon": 1e-4, "first_stage_ratio": 0.5}},
    paper="https://arxiv.org/abs/2502.03805",
)

CHUNKKV = Preset(
    name="chunkkv",
    description="ChunkKV: SnapKV scores, whole chunks of 20 tokens kept by mean score, rest of the budget by score (W=8)",
    recipe={"allocator": "uniform", "scorer": "snapkv_window", "executor": "chunk", "window": 8,
            "executor_kwargs": {"chunk_length": 20}},
    paper="https://arxiv.org/abs/2502.00299",
)

SNAPKV_MERGE = Preset(
    name="snapkv-merge",
    description="SnapKV with merge-on-evict: evicted values folded into the most key-similar kept entry (W=8)",
    recipe={"allocator": "uniform", "scorer": "snapkv_window", "executor": "merge", "window": 8,
            "executor_kwargs": {"similarity_threshold": 0.0}},
    paper="https://arxiv.org/abs/2406.13035",
)

STREAMINGLLM_REROTATED = Preset(
    name="streamingllm-rerotated",
    description="StreamingLLM with kept keys re-rotated to contiguous positions: 4 sinks + the most recent tokens (W=8)",
    recipe={"allocator": "uniform", "scorer": "sink", "window": 8, "scorer_kwargs": {"num_sinks": 4}, "rerotate_keys": True},
    paper="https://arxiv.org/abs/2309.17453",
)
