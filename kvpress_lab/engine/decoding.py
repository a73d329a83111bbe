"""Per-layer attention masks for decoding on a compressed cache.

transformers builds one causal mask per forward pass, sized from the first full-attention layer.
After eviction, layers hold different numbers of entries (pyramid budgets) and rows of a padded
batch hold filler slots, so one mask cannot fit every layer. These hooks rebuild the mask of each
full-attention layer from *that* layer's cache, with transformers' own mask builder (so eager,
sdpa and flash-attention each get the format they expect). They do nothing unless the cache
passed to the model holds at least one compressed layer.

Ragged (per-head) layers decode in one of two ways, picked from the attention implementation:
with ``sdpa``/``eager`` they get a per-head mask over a dense view; with ``flash_attention_2``
(or an explicit ``ragged_kernel``) the layer's attention call is routed, for that call only, to
:func:`~kvpress_lab.engine.varlen_attention.ragged_varlen_attention`, which runs a
variable-length kernel on the flat storage.
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
from kvpress_lab.engine.varlen_attention import (
    CALL_KWARG,
    RAGGED_VARLEN_IMPLEMENTATION,
    RaggedAttentionCall,
    VarlenKernel,
    ragged_kernel_for,
)

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
    ragged_kernel : VarlenKernel or None
        Variable-length kernel for ragged layers, whatever the attention implementation (for
        instance :func:`~kvpress_lab.engine.varlen_attention.reference_varlen_attention`).
        ``None`` picks from the implementation (see
        :func:`~kvpress_lab.engine.varlen_attention.ragged_kernel_for`).
    """

    def __init__(self, adapter: ModelAdapter, ragged_kernel: VarlenKernel | None = None):
        self.adapter = adapter
        self.ragged_kernel = ragged_kernel
        self.step = StepInputs(padding_mask=None)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mask_position = _mask_argument_position(adapter.decoder)
        self._kernels: dict[str | None, VarlenKernel | None] = {}
        self._routed: list[tuple[object, str | None]] = []  # (config, implementation) to restore

    def attach(self) -> None:
        """Register the hooks (idempotent)."""
        if self.handles:
            return
        self.handles.append(self.adapter.decoder.register_forward_pre_hook(self._capture_inputs, with_kwargs=True))
        for idx in self.adapter.compressible:
            module = self.adapter.attention[idx]
            hook = functools.partial(self._layer_mask, idx)
            self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._restore_implementation, always_call=True))

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
            kernel = self._ragged_kernel()
            layer.returns_dense_view = kernel is None
            if kernel is None:
                kwargs["attention_mask"] = self._ragged_mask(layer, hidden)
            else:
                self._route_to_varlen(module)
                kwargs["attention_mask"] = None
                kwargs[CALL_KWARG] = RaggedAttentionCall(layer=layer, kernel=kernel)
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

    def _ragged_kernel(self) -> VarlenKernel | None:
        """The varlen kernel for ragged layers, or ``None`` to decode them on a masked dense view."""
        if self.ragged_kernel is not None:
            return self.ragged_kernel
        implementation = self.adapter.config._attn_implementation
        if implementation not in self._kernels:
            self._kernels[implementation] = ragged_kernel_for(implementation)
        return self._kernels[implementation]

    def _route_to_varlen(self, module: nn.Module) -> None:
        """Make ``module``'s next attention call use the ragged varlen function (undone after its forward)."""
        config = module.config
        self._routed.append((config, config._attn_implementation))
        config._attn_implementation = RAGGED_VARLEN_IMPLEMENTATION

    def _restore_implementation(self, module: nn.Module, args: tuple, output: object) -> None:
        while self._routed:
            config, implementation = self._routed.pop()
            config._attn_implementation = implementation

    def _ragged_mask(self, layer: RaggedLayer, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, Hq, q, Lmax)`` per-head mask over the ragged layer's dense view (eager/sdpa format)."""
        implementation = self.adapter.config._attn_implementation
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


def enable_compressed_decoding(model: nn.Module, *, ragged_kernel: VarlenKernel | None = None) -> DecodingHooks:
    """Keep per-layer decoding masks on ``model`` so caches from :func:`~kvpress_lab.engine.prefill.prefill` decode correctly.

    Idempotent; the hooks are inert for ordinary caches. Remove them with
    :func:`disable_compressed_decoding`. Sessions of :meth:`Recipe.apply <kvpress_lab.Recipe.apply>`
    use these hooks when present.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM of a supported family.
    ragged_kernel : VarlenKernel or None
        When given, ragged (per-head) layers attend through this variable-length kernel instead
        of the one the attention implementation implies (see :class:`DecodingHooks`); set on
        existing hooks too.
    """
    hooks = getattr(model, _PERSISTENT_ATTR, None)
    if hooks is None:
        hooks = DecodingHooks(ModelAdapter.for_model(model), ragged_kernel=ragged_kernel)
        hooks.attach()
        setattr(model, _PERSISTENT_ATTR, hooks)
    elif ragged_kernel is not None:
        hooks.ragged_kernel = ragged_kernel
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
