"""StreamingLLM: attention sinks plus the most recent tokens."""

from __future__ import annotations

from kvpress_lab.presets import Preset

STREAMINGLLM = Preset(
    name="streamingllm",
    description="StreamingLLM: uniform budget per layer, 4 attention sinks + the most recent tokens (W=8)",
    recipe={"allocator": "uniform", "scorer": "sink", "window": 8, "scorer_kwargs": {"num_sinks": 4}},
    paper="https://arxiv.org/abs/2309.17453",
)
