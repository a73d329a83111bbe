"""Built-in layer allocators (installed as ``kvpress_lab.allocators``)."""

from __future__ import annotations

from kvpress_lab.allocators.adaptive import AdaptiveAllocator
from kvpress_lab.allocators.global_topk import GlobalTopKAllocator
from kvpress_lab.allocators.learned import LearnedAllocator
from kvpress_lab.allocators.pyramid import PyramidAllocator
from kvpress_lab.allocators.threshold import ThresholdAllocator
from kvpress_lab.allocators.pyramid_kvpress import KvpressPyramidAllocator
from kvpress_lab.allocators.uniform import UniformAllocator
from kvpress_lab.hookspecs import hookimpl

__all__ = ["UniformAllocator", "PyramidAllocator", "KvpressPyramidAllocator", "AdaptiveAllocator", "LearnedAllocator", "GlobalTopKAllocator",
           "ThresholdAllocator", "kvpress_lab_register_allocators"]


@hookimpl
def kvpress_lab_register_allocators() -> list[type]:
    """Register the built-in allocators."""
    return [UniformAllocator, PyramidAllocator, KvpressPyramidAllocator, AdaptiveAllocator, LearnedAllocator,
            GlobalTopKAllocator, ThresholdAllocator]
