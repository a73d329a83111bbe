"""Query-agnostic use: compress a context once, then ask it several questions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.cache_utils import Cache

from kvpress_lab.engine.decoding import enable_compressed_decoding
from kvpress_lab.engine.padding import padded_positions
from kvpress_lab.engine.session import CompressionSession

if TYPE_CHECKING:
    from kvpress_lab.recipe import Recipe

__all__ = ["prefill", "padded_positions"]


@torch.no_grad()
def prefill(recipe: Recipe, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Cache:
    """Run ``input_ids`` through ``model`` once and return the compressed cache.

    Parameters
    ----------
    recipe : Recipe
        The compression recipe.
    model : transformers.PreTrainedModel
        A causal LM of a supported family.
    input_ids : torch.Tensor
        ``(B, T)`` prompt tokens (left-padded when ``B > 1``).
    attention_mask : torch.Tensor or None
        ``(B, T)``, 0 on left padding.

    Returns
    -------
    transformers.Cache
        A ``DynamicCache`` whose full-attention layers are compressed; pass it to
        ``model(...)`` or ``model.generate(past_key_values=cache)`` with the full token sequence
        (context + question) and its attention mask. Decoding appends to the cache in place:
        ``copy.deepcopy(cache)`` before each question to reuse one compressed context.

    Notes
    -----
    Layers of a compressed cache hold different numbers of entries, so each layer needs its own
    attention mask; this function therefore leaves lightweight hooks on ``model`` (inert for
    ordinary caches). Remove them with :func:`kvpress_lab.engine.decoding.disable_compressed_decoding`.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, prompt_length), got shape {tuple(input_ids.shape)}.")
    position_ids = None
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must match input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}."
            )
        position_ids = padded_positions(attention_mask)
    enable_compressed_decoding(model)
    with CompressionSession(recipe, model):
        output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    if cache is None:
        raise RuntimeError(f"{type(model).__name__} returned no cache; load it with use_cache enabled.")
    return cache
