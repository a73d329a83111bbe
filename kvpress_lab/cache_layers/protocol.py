"""The layer protocol: what an executor's compressed cache layer provides, decoding included.

An :class:`~kvpress_lab.protocols.Executor` turns a layer's selection into a cache layer (a
transformers ``CacheLayerMixin``: ``update``, ``get_seq_length``, ``get_mask_sizes``, ...). After
eviction that layer also owns how decoding attends to it: before every attention call on a
compressed cache, the engine's decoding hooks hand the layer a :class:`DecodingStep` and apply
the :class:`LayerAttention` it returns. The engine never switches on layer types, so a third-party
executor with its own layer class decodes correctly without engine changes.

Shape legend: :mod:`kvpress_lab.layer_view`; ``q`` is the number of new tokens of the step.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch
from transformers.masking_utils import create_causal_mask

from kvpress_lab.errors import PluginError

__all__ = [
    "VarlenKernel", "StepMemo", "DecodingStep", "LayerAttention", "CompressedCacheLayer", "causal_layer_attention", "no_padding_attention",
    "NO_MASK", "check_layer", "is_compressed_layer",
]

_PROTOCOL_METHODS = ("update", "get_seq_length", "get_mask_sizes", "kept_counts", "head_entries", "nbytes", "prepare_decoding")


class VarlenKernel(Protocol):
    """The subset of ``flash_attn.flash_attn_varlen_func`` the ragged path calls.

    ``q`` is ``(total_q, Hq, D)``, ``k`` and ``v`` are ``(total_k, Hk, D)`` with ``Hq % Hk == 0``;
    ``cu_seqlens_q`` / ``cu_seqlens_k`` are ``(S + 1,)`` int32 offsets of the ``S`` sequences.
    With ``causal=True`` the mask is aligned to the bottom-right corner (flash-attn >= 2.1):
    query ``i`` of a sequence with ``Lq`` queries and ``Lk`` keys sees keys ``j <= i + Lk - Lq``.
    Returns ``(total_q, Hq, D)``.
    """

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        cu_seqlens_k: torch.Tensor,
        max_seqlen_q: int,
        max_seqlen_k: int,
        *,
        softmax_scale: float | None = None,
        causal: bool = False,
        **kwargs: object,
    ) -> torch.Tensor: ...


class StepMemo:
    """Values computed once per forward and shared by every layer of it (masks, new-token validity).

    The decoding hooks make one per decoder forward and hand it to every layer's
    :class:`DecodingStep`, so layers whose masks are equal (same length, same filler pattern) build
    one between them: :meth:`get` builds the value of a key the first time it is asked in the step.
    A key must name everything the value depends on, beyond what is common to the whole forward
    (the padding mask, the new tokens, the cache). Values are shared: never modify them in place.

    >>> memo = StepMemo()
    >>> memo.get(("mask", 129), lambda: "built"), memo.get(("mask", 129), lambda: "again"), memo.built
    ('built', 'built', 1)
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, object] = {}
        self.built = 0
        """How many values were built (keys asked for the first time) in this step."""

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value of ``key`` in this step, built by ``build()`` the first time it is asked."""
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = build()
            self.built += 1
            return value


@dataclass(frozen=True, eq=False)
class DecodingStep:
    """One attention call of a decoding step (or a prefill continuing a compressed cache), seen by one layer.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The decoder's text config (``config._attn_implementation`` names the attention kernel).
    cache : transformers.Cache
        The cache the model was called with; ``cache.layers[layer_idx]`` is the layer asked.
    layer_idx : int
        Index of the layer in the model.
    hidden_states : torch.Tensor
        ``(B, q, hidden_size)``, the attention module's input.
    padding_mask : torch.Tensor or None
        ``(B, past + q)`` bool, the 2-D attention mask the decoder received (``False`` on padding),
        or ``None`` when none was given (every token real).
    num_query_heads : int
        ``Hq``.
    varlen_kernel : VarlenKernel or None
        A variable-length kernel the user asked ragged layers to attend with
        (``enable_compressed_decoding(model, ragged_kernel=...)``), or ``None``.
    memo : StepMemo
        Shared by the layers of one forward (see :class:`StepMemo`); a fresh one by default.
    """

    config: Any
    cache: Any
    layer_idx: int
    hidden_states: torch.Tensor
    padding_mask: torch.Tensor | None
    num_query_heads: int
    varlen_kernel: VarlenKernel | None = None
    memo: StepMemo = field(default_factory=StepMemo, repr=False)

    @property
    def query_length(self) -> int:
        """``q``, new tokens of this step."""
        return self.hidden_states.shape[1]

    def new_tokens_valid(self) -> torch.Tensor:
        """``(B, q)`` bool: which new tokens are real (the last ``q`` columns of the padding mask).

        Computed once per step (shared by the layers: do not modify it in place).
        """
        batch, new = self.hidden_states.shape[:2]
        device = self.hidden_states.device

        def build() -> torch.Tensor:
            mask = self.padding_mask
            if mask is not None and mask.shape[-1] >= new:
                return mask[:, -new:].to(device=device, dtype=torch.bool)
            return torch.ones(batch, new, dtype=torch.bool, device=device)

        return self.memo.get(("new_tokens_valid", batch, new, device), build)

    def new_tokens_all_real(self) -> bool:
        """Whether every new token is real: ``True`` without a look at the device when there is no padding mask.

        With a padding mask this reads :meth:`new_tokens_valid` on the host, once per step.
        """
        if self.padding_mask is None:
            return True
        return self.memo.get(("new_tokens_all_real", self.query_length), lambda: bool(self.new_tokens_valid().all()))

    def mask_key(self) -> tuple:
        """What every mask of this step depends on besides the layer: kernel, dtype, device, ``B``, ``q``."""
        hidden = self.hidden_states
        return (self.config._attn_implementation, hidden.dtype, hidden.device, hidden.shape[0], hidden.shape[1])


@dataclass(frozen=True)
class LayerAttention:
    """How one attention call attends to its layer: what the engine puts into the module's arguments.

    Parameters
    ----------
    attention_mask : torch.Tensor or None
        Replaces the module's ``attention_mask`` (in the format its attention implementation
        expects: ``(B, 1 or Hq, q, S)`` bool for sdpa, additive float for eager, ``None`` for a
        kernel that needs none).
    attn_implementation : str or None
        When set, this call only runs the attention function registered under this name in
        transformers' ``AttentionInterface`` (restored after the module's forward).
    extra_kwargs : Mapping[str, object]
        Keyword arguments added to the module call (they reach the attention function).
    """

    attention_mask: torch.Tensor | None
    attn_implementation: str | None = None
    extra_kwargs: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@runtime_checkable
class CompressedCacheLayer(Protocol):
    """What an executor's cache layer provides (beyond transformers' ``CacheLayerMixin``).

    ``get_seq_length()`` is the *logical* length (tokens seen: positions of new tokens continue
    from it); :attr:`physical_length` is what the layer holds per head (filler slots included);
    ``update(keys, values)`` appends ``(B, Hkv, q, D)`` new entries and returns what the attention
    function will read. :meth:`prepare_decoding` is called before every ``update`` on a compressed
    cache, with the same step.
    """

    @property
    def physical_length(self) -> int:
        """Entries held per KV head, filler slots included (the width attention reads)."""
        ...

    def kept_counts(self) -> torch.Tensor:
        """``(B, Hkv)`` int64 on the CPU: real entries held per row and KV head (filler excluded)."""
        ...

    def head_entries(self, row: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values held for ``(row, head)``, each ``(n, D)``, in original token order."""
        ...

    def nbytes(self) -> int:
        """Bytes held: kept entries and any metadata."""
        ...

    def prepare_decoding(self, step: DecodingStep) -> LayerAttention:
        """How the coming attention call attends to this layer (its mask, or its own attention call)."""
        ...


NO_MASK = LayerAttention(None)
"""The call attends to every entry its layer holds, with no mask (immutable, shared)."""

_STEP_PADDING = object()  # the step's own padding mask: the same for every layer of the step


def causal_layer_attention(
    step: DecodingStep,
    padding_mask: torch.Tensor | Callable[[], torch.Tensor] | None = None,
    *,
    padding_key: Hashable | None = None,
) -> LayerAttention:
    """transformers' own causal mask for ``step``'s layer, sized from that layer's ``get_mask_sizes``.

    ``padding_mask`` is ``(B, S)`` bool in the layer's *logical* frame (``S`` its logical length plus
    ``q``), or a function returning it (called only when the mask is built); default: the step's
    own. Used by dense layers and by uncompressed layers of a compressed cache (whose mask the
    decoder sized for another layer).

    The mask is built once per step for each distinct ``(query offset, kv length, kv offset)`` of
    the layers asking and each padding: with the step's own padding mask, layers of equal sizes
    share one mask; a layer passing its own ``padding_mask`` shares only when it gives a
    ``padding_key`` that identifies that mask's content among the step's layers (``None``: never
    shared).
    """
    if padding_mask is None:
        mask, padding_key = step.padding_mask, _STEP_PADDING
    else:
        mask = padding_mask

    def build() -> LayerAttention:
        padding = mask() if callable(mask) else mask
        return LayerAttention(
            create_causal_mask(
                config=step.config, inputs_embeds=step.hidden_states, attention_mask=padding, cache=step.cache, layer_idx=step.layer_idx
            )
        )

    if padding_key is None:
        step.memo.built += 1
        return build()
    return step.memo.get(("causal", step.mask_key(), _mask_sizes(step), padding_key), build)


def no_padding_attention(step: DecodingStep) -> LayerAttention:
    """The causal mask of ``step``'s layer when none of its slots nor new tokens is padding.

    Nothing is built for a single new token under ``sdpa`` or ``eager`` (attending to every held
    entry needs no mask); otherwise transformers' mask from the layer's sizes, once per step and
    distinct size (:func:`causal_layer_attention` with no padding).
    """
    if step.query_length == 1 and step.config._attn_implementation in ("sdpa", "eager"):
        return NO_MASK

    def build() -> LayerAttention:
        return LayerAttention(
            create_causal_mask(
                config=step.config, inputs_embeds=step.hidden_states, attention_mask=None, cache=step.cache, layer_idx=step.layer_idx
            )
        )

    return step.memo.get(("causal", step.mask_key(), _mask_sizes(step), None), build)


def _mask_sizes(step: DecodingStep) -> tuple[int, int, int]:
    """``(query offset, kv length, kv offset)`` of the step's layer: what transformers sizes its mask from."""
    cache, idx = step.cache, step.layer_idx
    offset = cache.get_query_offset(idx) if hasattr(cache, "get_query_offset") else cache.get_seq_length(idx)
    return (int(offset), *cache.get_mask_sizes(step.query_length, idx))


def is_compressed_layer(layer: object) -> bool:
    """Whether ``layer`` is an executor's compressed layer (it owns its decoding: ``prepare_decoding``).

    >>> from transformers.cache_utils import DynamicLayer
    >>> is_compressed_layer(DynamicLayer())
    False
    """
    return callable(getattr(type(layer), "prepare_decoding", None))


def check_layer(layer: object, executor: str) -> None:
    """Guard an executor's answer: the layer it built follows :class:`CompressedCacheLayer`.

    Raises
    ------
    PluginError
        Naming the executor and the missing methods.
    """
    missing = [name for name in _PROTOCOL_METHODS if not callable(getattr(layer, name, None))]
    if not hasattr(layer, "physical_length"):
        missing.append("physical_length")
    if missing:
        raise PluginError(
            f"Executor {executor!r} built a {type(layer).__name__} that lacks {', '.join(missing)}; a compressed cache "
            "layer must follow kvpress_lab.cache_layers.CompressedCacheLayer (see the 'write an executor' how-to)."
        )
