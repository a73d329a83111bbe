"""The plugin module: what the ``kvpress_lab`` entry point of this package names.

kvpress_lab calls each ``kvpress_lab_register_*`` function once, when it builds its registry
(never per layer), and indexes what they return by name. A hook returns a list; names must be
unique per role across every installed plugin (a clash raises ``DuplicateStrategyError`` naming
both plugins), so prefix yours with your project's name.

Hooks this module does not define (allocators, executors) are simply not called for it.
"""

from __future__ import annotations

from kvpress_lab import Preset, hookimpl
from kvpress_lab_example_plugin.recency_norm import ExampleRecencyNormScorer

__all__ = ["EXAMPLE_STREAMING", "kvpress_lab_register_scorers", "kvpress_lab_register_presets"]

#: A preset: named Recipe arguments. Users still override any of them:
#: ``Recipe.preset("example-streaming", budget=64, scorer_kwargs={"half_life": 32})``.
EXAMPLE_STREAMING = Preset(
    name="example-streaming",
    description="Example plugin: uniform budget per layer, key-norm x recency scoring (no attention)",
    recipe={
        "allocator": "uniform",  # a built-in strategy: plugins compose freely with built-ins
        "scorer": "example_recency",
        "window": 8,
        "scorer_kwargs": {"recency_weight": 0.5, "half_life": 64},
    },
    paper="https://arxiv.org/abs/2406.11430",
)


@hookimpl
def kvpress_lab_register_scorers() -> list[type]:
    """Register this package's scorers (classes, not instances: a Recipe builds them)."""
    return [ExampleRecencyNormScorer]


@hookimpl
def kvpress_lab_register_presets() -> list[Preset]:
    """Register this package's presets."""
    return [EXAMPLE_STREAMING]
