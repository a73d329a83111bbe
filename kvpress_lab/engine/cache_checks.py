"""What the engine refuses rather than run uncompressed: caches, layers and generate options it cannot compress."""

from __future__ import annotations

from collections.abc import Iterable

from transformers.cache_utils import DynamicLayer

from kvpress_lab.cache_layers import is_compressed_layer
from kvpress_lab.engine.generate_guard import GenerateCall
from kvpress_lab.errors import UnsupportedCacheError

__all__ = ["check_cache", "check_generate_options"]

_DEFAULT_CACHES = (None, "dynamic")


def check_cache(cache: object, compressible: Iterable[int]) -> None:
    """Refuse an offloaded cache, or full-attention layers neither dynamic nor compressed (static, quantized)."""
    if getattr(cache, "offloading", False):
        raise UnsupportedCacheError(
            f"This {type(cache).__name__} offloads its layers (offloading=True, cache_implementation='offloaded'); "
            "kvpress_lab cannot compress an offloaded cache. Use the default DynamicCache."
        )
    for idx in compressible:
        if idx >= len(cache.layers):
            continue
        layer = cache.layers[idx]
        if type(layer) is not DynamicLayer and not is_compressed_layer(layer):
            raise UnsupportedCacheError(
                f"Layer {idx} of the {type(cache).__name__} is a {type(layer).__name__}; kvpress_lab compresses "
                "transformers' DynamicLayer (the default DynamicCache of generate). Use the default cache."
            )


def check_generate_options(call: GenerateCall, compressible: Iterable[int]) -> int | None:
    """Refuse ``generate`` options under which the prefill would not be compressed; return ``prefill_chunk_size``."""
    if call.option("use_cache") is False:
        raise UnsupportedCacheError(
            "generate(use_cache=False) inside `with recipe.apply(model)`: without a KV cache there is nothing to "
            "compress, and the run would be uncompressed. Drop use_cache=False, or generate outside the block."
        )
    implementation = call.option("cache_implementation")
    if implementation not in _DEFAULT_CACHES:
        raise UnsupportedCacheError(
            f"generate(cache_implementation={implementation!r}) inside `with recipe.apply(model)`: kvpress_lab "
            "compresses transformers' default DynamicCache only. Drop cache_implementation (or pass 'dynamic')."
        )
    if call.cache is not None:
        check_cache(call.cache, compressible)
    chunk_size = call.option("prefill_chunk_size")
    if chunk_size is not None and (call.input_ids is None or (call.cache is not None and call.cache.get_seq_length() > 0)):
        raise UnsupportedCacheError(
            f"generate(prefill_chunk_size={chunk_size}) inside `with recipe.apply(model)` compresses a chunked "
            "prefill of input_ids into an empty cache; got inputs_embeds or a cache that already holds tokens."
        )
    return chunk_size
