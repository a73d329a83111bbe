"""Built-in named presets (installed as ``kvpress_lab.strategies``)."""

from __future__ import annotations

from kvpress_lab.hookspecs import hookimpl
from kvpress_lab.presets import Preset
from kvpress_lab.strategies.adakv import ADAKV, PYRAMID_ADAKV
from kvpress_lab.strategies.adaptive import ADAPTIVE
from kvpress_lab.strategies.h2o import H2O
from kvpress_lab.strategies.kvzip import KVZIP, KVZIP_THRESHOLD
from kvpress_lab.strategies.kvpress_flavours import KVPRESS_FLAVOURS
from kvpress_lab.strategies.learned import LEARNED
from kvpress_lab.strategies.pyramidkv import PYRAMIDKV
from kvpress_lab.strategies.query_agnostic import COMPACTOR, CUR, EXPECTED_ATTENTION, KEYDIFF, LAGKV
from kvpress_lab.strategies.refinements import CHUNKKV, CRITICALKV, SNAPKV_MERGE, STREAMINGLLM_REROTATED
from kvpress_lab.strategies.snapkv import SNAPKV
from kvpress_lab.strategies.streamingllm import STREAMINGLLM

__all__ = ["PRESETS", "kvpress_lab_register_presets"]

PRESETS: tuple[Preset, ...] = (PYRAMIDKV, SNAPKV, H2O, STREAMINGLLM, ADAKV, PYRAMID_ADAKV, ADAPTIVE, LEARNED,
                           KEYDIFF, LAGKV, COMPACTOR, CUR, EXPECTED_ATTENTION,
                           CRITICALKV, CHUNKKV, SNAPKV_MERGE, STREAMINGLLM_REROTATED, KVZIP, KVZIP_THRESHOLD) + KVPRESS_FLAVOURS


@hookimpl
def kvpress_lab_register_presets() -> list[Preset]:
    """Register the built-in presets."""
    return list(PRESETS)
