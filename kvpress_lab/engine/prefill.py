"""Query-agnostic use: compress a context once, then ask it several questions."""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache

from kvpress_lab.engine.chunking import check_chunk_size, check_chunkable
from kvpress_lab.engine.decoding import mark_decoding_compression
from kvpress_lab.engine.model_hooks import enable_compressed_decoding, hooks_in_use
from kvpress_lab.engine.padding import check_left_padding, padded_positions
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.engine.session import CompressionSession

__all__ = ["prefill", "compressed_prefill", "full_prefill", "padded_positions", "forward_cache", "last_logits_only"]


@torch.no_grad()
def prefill(
    recipe: EngineRecipe,
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> Cache:
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
    chunk_size : int or None
        Prefill in chunks of this many tokens, compressing after each
        (:mod:`kvpress_lab.engine.chunking`): no layer ever holds more than its budget plus one
        chunk. ``None`` (default): one pass.

    Returns
    -------
    transformers.Cache
        A ``DynamicCache`` whose full-attention layers are compressed; pass it to
        ``model(...)`` or ``model.generate(past_key_values=cache)`` with the full token sequence
        (context + question) and its attention mask. Decoding appends to the cache in place:
        ``copy.deepcopy(cache)`` before each question to reuse one compressed context.

    Raises
    ------
    RuntimeError
        Inside a ``with recipe.apply(model)`` block of the same thread (its session would compress
        this prefill too).

    Notes
    -----
    Layers of a compressed cache hold different numbers of entries, so each layer needs its own
    attention mask; this function therefore leaves lightweight hooks on ``model`` (inert for
    ordinary caches). Remove them with :func:`kvpress_lab.engine.model_hooks.disable_compressed_decoding`.
    With a recipe's ``decode_budget``, decoding the cache is compressed only inside ``with
    recipe.apply(model)``; outside, it is refused (:class:`~kvpress_lab.UnsupportedCacheError`).
    """
    check_prompt(model, input_ids, attention_mask)
    with hooks_in_use(model, "Recipe.prefill"):
        cache = compressed_prefill(recipe, model, input_ids, attention_mask, chunk_size=chunk_size)
        enable_compressed_decoding(model)  # before the scope ends: the hooks stay registered, never removed and re-added
    return cache


@torch.no_grad()
def compressed_prefill(recipe: EngineRecipe, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       *, chunk_size: int | None = None) -> Cache:
    """:func:`prefill` for a caller that decodes the cache inside :func:`~kvpress_lab.engine.model_hooks.hooks_in_use`.

    Leaves no decoding hooks on the model beyond the caller's scope (:func:`kvpress_lab.ask` uses it).
    """
    check_chunk_size(chunk_size)
    position_ids = None if attention_mask is None else padded_positions(attention_mask)
    with CompressionSession(recipe, model) as session:
        if chunk_size is None:
            cache = forward_cache(model, input_ids, attention_mask=attention_mask, position_ids=position_ids)
        else:
            check_chunkable(recipe, chunk_size)
            session.begin_chunked_prefill(input_ids, attention_mask)
            cache = _forward_chunks(model, input_ids, attention_mask, position_ids, chunk_size)
    mark_decoding_compression(cache, recipe)
    return cache


@torch.no_grad()
def full_prefill(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 chunk_size: int | None = None) -> Cache:
    """The uncompressed cache of ``input_ids`` ``(B, T)``: one forward, or chunks of ``chunk_size`` tokens."""
    check_chunk_size(chunk_size)
    position_ids = None if attention_mask is None else padded_positions(attention_mask)
    if chunk_size is None:
        return forward_cache(model, input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return _forward_chunks(model, input_ids, attention_mask, position_ids, chunk_size)


def _forward_chunks(model, input_ids, attention_mask, position_ids, chunk_size: int) -> Cache:
    """Run the prompt chunk by chunk into one cache, and return it."""
    cache = DynamicCache(config=model.config)
    for start in range(0, input_ids.shape[1], chunk_size):
        stop = min(start + chunk_size, input_ids.shape[1])
        cache = forward_cache(
            model,
            input_ids[:, start:stop],
            attention_mask=None if attention_mask is None else attention_mask[:, :stop],
            position_ids=None if position_ids is None else position_ids[:, start:stop],
            cache=cache,
        )
    return cache


def forward_cache(model: nn.Module, input_ids: torch.Tensor, **kwargs) -> Cache:
    """The cache of one ``model(input_ids, use_cache=True, **kwargs)`` forward, whose logits nobody reads.

    Asks for the last position's logits only (:func:`last_logits_only`). Inside a
    ``recipe.apply(model)`` block the cache comes back compressed; outside, it is the full cache.

    Raises
    ------
    RuntimeError
        The model returned no cache.
    """
    output = model(input_ids=input_ids, use_cache=True, **kwargs, **last_logits_only(model))
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    if cache is None:
        raise RuntimeError(f"{type(model).__name__} returned no cache; load it with use_cache enabled.")
    return cache


def last_logits_only(model: nn.Module) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` when ``model.forward`` takes it, else ``{}``: a prefill that returns only a cache.

    The logits of every prompt position are never read; on the embedded model's 49k vocabulary
    computing them all costs about a sixth of a 2,048-token prefill on CPU.
    """
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: ask for nothing
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


def check_prompt(model: nn.Module, input_ids: object, attention_mask: object) -> None:
    """Validate a prompt before anything touches the model: types, shapes, device, padding side."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids (B, T), got {type(input_ids).__name__}.")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be (batch, prompt_length) with both >= 1, got shape {tuple(input_ids.shape)}.")
    device = next(iter(model.parameters()), torch.empty(0)).device
    if input_ids.device != device:
        raise ValueError(f"input_ids are on {input_ids.device} but the model is on {device}; move them with .to({str(device)!r}).")
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor or None, got {type(attention_mask).__name__}.")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must match input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}.")
    if attention_mask.device != input_ids.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but input_ids are on {input_ids.device}.")
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (real token) only.")
    check_left_padding(attention_mask)
