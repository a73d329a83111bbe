"""Built-in layer allocators (installed as ``kvpress_lab.allocators``)."""

from __future__ import annotations

from kvpress_lab.allocators.pyramid import PyramidAllocator
from kvpress_lab.allocators.uniform import UniformAllocator
from kvpress_lab.hookspecs import hookimpl

__all__ = ["UniformAllocator", "PyramidAllocator", "kvpress_lab_register_allocators"]


@hookimpl
def kvpress_lab_register_allocators() -> list[type]:
    """Register the built-in allocators."""
    return [UniformAllocator, PyramidAllocator]
