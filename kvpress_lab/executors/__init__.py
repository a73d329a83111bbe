"""Built-in eviction executors (registered through the ``kvpress_lab`` entry-point group)."""

from __future__ import annotations

from kvpress_lab.executors.chunk import ChunkExecutor
from kvpress_lab.executors.gather import GatherExecutor, select_top_k
from kvpress_lab.executors.merge import MergeExecutor, RaggedMergeExecutor
from kvpress_lab.executors.ragged import RaggedExecutor
from kvpress_lab.hookspecs import hookimpl

__all__ = ["GatherExecutor", "RaggedExecutor", "ChunkExecutor", "MergeExecutor", "RaggedMergeExecutor", "select_top_k", "kvpress_lab_register_executors"]


@hookimpl
def kvpress_lab_register_executors() -> list[type]:
    """Register the built-in executors."""
    return [GatherExecutor, RaggedExecutor, ChunkExecutor, MergeExecutor, RaggedMergeExecutor]
