"""Per-layer attention masks for decoding on a compressed cache.

transformers builds one causal mask per forward pass, sized from the first full-attention layer.
After eviction, layers hold different numbers of entries (pyramid budgets) and rows of a padded
batch hold filler slots, so one mask cannot fit every layer. These hooks rebuild the mask of each
full-attention layer from *that* layer's cache, with transformers' own mask builder (so eager,
sdpa and flash-attention each get the format they expect). They do nothing unless the cache
passed to the model holds at least one compressed layer.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from kvpress_lab.engine.cache_layer import CompressedLayer
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.ragged_layer import RaggedLayer

__all__ = ["DecodingHooks", "StepInputs", "cache_from_kwargs", "enable_compressed_decoding", "disable_compressed_decoding"]

COMPRESSED_FLAG = "_kvpress_lab_compressed"
_PERSISTENT_ATTR = "_kvpress_lab_decoding_hooks"


def cache_from_kwargs(kwargs: dict) -> object | None:
    """The cache passed to a module call (``cache`` since transformers 5.x, ``past_key_values`` before)."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


@dataclass
class StepInputs:
    """What the decoder's forward received this step."""

    padding_mask: torch.Tensor | None  # (B, past + q) bool, or None when no 2-D mask was given


class DecodingHooks:
    """Hooks on the decoder and its attention modules that give each layer its own mask.

    Parameters
    ----------
    adapter : ModelAdapter
        The model's attention modules and config.
    """

    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter
        self.step = StepInputs(padding_mask=None)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mask_position = _mask_argument_position(adapter.decoder)

    def attach(self) -> None:
        """Register the hooks (idempotent)."""
        if self.handles:
            return
        self.handles.append(self.adapter.decoder.register_forward_pre_hook(self._capture_inputs, with_kwargs=True))
        for idx in self.adapter.compressible:
            module = self.adapter.attention[idx]
            hook = functools.partial(self._layer_mask, idx)
            self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def detach(self) -> None:
        """Remove every hook this object registered."""
        while self.handles:
            self.handles.pop().remove()

    # -- hooks -----------------------------------------------------------------------------

    def _capture_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and self._mask_position is not None and len(args) > self._mask_position:
            mask = args[self._mask_position]
        if mask is not None and mask.dim() != 2:
            mask = None  # a custom 4-D mask is the caller's business; we cannot re-slice it per layer
        self.step = StepInputs(padding_mask=None if mask is None else mask.to(torch.bool))

    def _layer_mask(self, idx: int, module: nn.Module, args: tuple, kwargs: dict):
        cache = cache_from_kwargs(kwargs)
        if cache is None or not getattr(cache, COMPRESSED_FLAG, False) or idx >= len(cache.layers):
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        layer = cache.layers[idx]
        query_length = hidden.shape[1]
        padding = self.step.padding_mask
        if isinstance(layer, RaggedLayer):
            kwargs["attention_mask"] = self._ragged_mask(layer, hidden)
            return args, kwargs
        if isinstance(layer, CompressedLayer):
            if padding is not None and padding.shape[-1] >= query_length:
                new_valid = padding[:, -query_length:]
            else:
                new_valid = torch.ones(hidden.shape[0], query_length, dtype=torch.bool, device=hidden.device)
            layer.pending_valid = new_valid
            padding = layer.virtual_padding_mask(new_valid)
        kwargs["attention_mask"] = create_causal_mask(
            config=self.adapter.config, inputs_embeds=hidden, attention_mask=padding, cache=cache, layer_idx=idx
        )
        return args, kwargs


    def _ragged_mask(self, layer: RaggedLayer, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, Hq, q, Lmax)`` per-head mask over the ragged layer's dense view (eager/sdpa format)."""
        implementation = self.adapter.config._attn_implementation
        if implementation not in ("sdpa", "eager"):
            raise NotImplementedError(
                f"Ragged (per-head) caches decode with attn_implementation 'sdpa' or 'eager'; got {implementation!r}."
            )
        query_length = hidden.shape[1]
        groups = self.adapter.num_query_heads // self.adapter.num_kv_heads
        valid = layer.head_valid(query_length, groups)  # (B, Hq, Lmax)
        width = valid.shape[-1]
        slots = torch.arange(width, device=valid.device)
        last_visible = width - query_length + torch.arange(query_length, device=valid.device)  # (q,)
        mask = valid[:, :, None, :] & (slots[None, :] <= last_visible[:, None])[None, None]  # (B, Hq, q, Lmax)
        if implementation == "sdpa":
            return mask
        zero = torch.zeros((), dtype=hidden.dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(hidden.dtype).min)


def _mask_argument_position(decoder: nn.Module) -> int | None:
    try:
        names = list(inspect.signature(decoder.forward).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("attention_mask") if "attention_mask" in names else None


def enable_compressed_decoding(model: nn.Module) -> DecodingHooks:
    """Keep per-layer decoding masks on ``model`` so caches from :func:`~kvpress_lab.engine.prefill.prefill` decode correctly.

    Idempotent; the hooks are inert for ordinary caches. Remove them with
    :func:`disable_compressed_decoding`.
    """
    hooks = getattr(model, _PERSISTENT_ATTR, None)
    if hooks is None:
        hooks = DecodingHooks(ModelAdapter.for_model(model))
        hooks.attach()
        setattr(model, _PERSISTENT_ATTR, hooks)
    return hooks


def disable_compressed_decoding(model: nn.Module) -> None:
    """Remove the hooks installed by :func:`enable_compressed_decoding` (no-op when absent)."""
    hooks = getattr(model, _PERSISTENT_ATTR, None)
    if hooks is not None:
        hooks.detach()
        delattr(model, _PERSISTENT_ATTR)


def persistent_hooks(model: nn.Module) -> DecodingHooks | None:
    """The persistent decoding hooks of ``model``, if any."""
    return getattr(model, _PERSISTENT_ATTR, None)
