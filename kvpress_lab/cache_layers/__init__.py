"""Compressed cache layers: what executors build, and the protocol through which they decode.

* :mod:`~kvpress_lab.cache_layers.protocol` — :class:`CompressedCacheLayer`, the contract every
  executor's layer follows, and the :class:`DecodingStep` / :class:`LayerAttention` it exchanges
  with the engine's decoding hooks;
* :mod:`~kvpress_lab.cache_layers.dense` — :class:`CompressedLayer`, dense per layer (``gather``);
* :mod:`~kvpress_lab.cache_layers.quantized` — :class:`QuantizedLayer`, the dense layer with 8/4-bit
  storage (``gather`` with ``kv_bits``);
* :mod:`~kvpress_lab.cache_layers.ragged` — :class:`RaggedLayer`, per-head storage (``ragged``);
* :mod:`~kvpress_lab.cache_layers.varlen_attention` — variable-length attention over ragged layers.

This package stands on the ground floor with the other contracts: it never imports the engine.
"""

from __future__ import annotations

from kvpress_lab.cache_layers.dense import CompressedLayer
from kvpress_lab.cache_layers.protocol import (
    CompressedCacheLayer,
    DecodingStep,
    LayerAttention,
    causal_layer_attention,
    check_layer,
    is_compressed_layer,
)
from kvpress_lab.cache_layers.quantized import QuantizedLayer
from kvpress_lab.cache_layers.ragged import RaggedLayer

__all__ = [
    "CompressedCacheLayer",
    "DecodingStep",
    "LayerAttention",
    "causal_layer_attention",
    "check_layer",
    "is_compressed_layer",
    "CompressedLayer",
    "QuantizedLayer",
    "RaggedLayer",
]
