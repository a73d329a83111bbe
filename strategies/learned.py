"""Learned: SnapKV with per-layer budgets from an offline profile of the model's attention funnel."""

from __future__ import annotations

from kvpress_lab.presets import Preset
from kvpress_lab.strategies.snapkv import PAPER_SNAPKV_SCORER

__all__ = ["LEARNED"]

LEARNED = Preset(
    name="learned",
    description="Learned: layer budgets from the shipped SmolLM2-135M-Instruct entropy profile, W=8, max pool 7",
    recipe={"allocator": "learned", "scorer": "snapkv_window", "window": 8,
            "allocator_kwargs": {"profile": "smollm2-135m-instruct", "floor": 0.2}, "scorer_kwargs": dict(PAPER_SNAPKV_SCORER)},
    paper="https://arxiv.org/abs/2406.02069",
)
