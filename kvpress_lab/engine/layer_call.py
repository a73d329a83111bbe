"""What one forward, and one attention layer's call in it, give the engine: read once, from the hooks or a replay.

:class:`ForwardInputs` is what the decoder's forward received (its cache, the 2-D padding mask
the model's hooks already read, the token ids and position ids); :class:`LayerCall` is what a
full-attention layer's forward received (its input hidden states, rotary tables and cache) plus
the queries its attention computed when they were captured. The hooks build them from a
module's ``(args, kwargs)`` (:meth:`ForwardInputs.from_decoder_call`,
:meth:`LayerCall.from_attention_call`); a shared-prefill replay builds them from what it kept
(:func:`~kvpress_lab.engine.shared_prefill.compress_many`). Either way they reach the session
through its one public entry, :meth:`CompressionSession.compress_layer
<kvpress_lab.engine.session.CompressionSession.compress_layer>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kvpress_lab.cache_layers import is_compressed_layer
from kvpress_lab.engine.decoding import cache_from_kwargs
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.padding import check_left_padding
from kvpress_lab.layer_view import LayerView

__all__ = ["ForwardInputs", "LayerCall"]


@dataclass(frozen=True)
class ForwardInputs:
    """What the decoder's forward received.

    Parameters
    ----------
    cache : transformers.Cache or None
        The cache passed to the model.
    padding : torch.Tensor or None
        ``(B, past + S)`` bool, ``False`` on padding; ``None`` without a 2-D mask.
    input_ids : torch.Tensor or None
        ``(B, S)`` ids (``None`` when the forward ran on embeddings).
    position_ids : torch.Tensor or None
        ``(B or 1, S)`` the positions the forward was given, or ``None``.
    new_tokens : int or None
        ``S``, the tokens this forward adds (``None`` when neither ids nor embeddings were given).
    """

    cache: Any
    padding: torch.Tensor | None
    input_ids: torch.Tensor | None
    position_ids: torch.Tensor | None = None
    new_tokens: int | None = None

    @classmethod
    def from_decoder_call(cls, args: tuple, kwargs: dict, padding: torch.Tensor | None) -> ForwardInputs:
        """From the decoder's forward-hook arguments and the padding mask the hooks read."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        inputs = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        return cls(cache_from_kwargs(kwargs), padding, input_ids, kwargs.get("position_ids"),
                   None if inputs is None else inputs.shape[1])

    @classmethod
    def of_prompt(cls, cache: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  position_ids: torch.Tensor | None) -> ForwardInputs:
        """A prefill of ``input_ids`` ``(B, T)`` into ``cache``, as a replay states it."""
        padding = None if attention_mask is None else attention_mask.to(torch.bool)
        return cls(cache, padding, input_ids, position_ids, input_ids.shape[1])


@dataclass(frozen=True)
class LayerCall:
    """One full-attention layer's forward in ``forward``.

    Parameters
    ----------
    idx : int
        Layer index in the model.
    hidden : torch.Tensor
        ``(B, S, hidden_size)``, the attention module's input.
    position_embeddings : tuple of torch.Tensor
        ``(cos, sin)``, each ``(B or 1, S, D)``.
    forward : ForwardInputs
        The decoder's forward this call belongs to (its cache, padding, ids).
    queries : torch.Tensor or None
        ``(B, Hq, S, D)`` the attention computed, when captured (:mod:`kvpress_lab.engine.query_capture`).
    """

    idx: int
    hidden: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    forward: ForwardInputs
    queries: torch.Tensor | None = None

    @classmethod
    def from_attention_call(cls, idx: int, args: tuple, kwargs: dict, forward: ForwardInputs,
                            queries: torch.Tensor | None = None) -> LayerCall:
        """From an attention module's forward-hook arguments (its cache read from them, or the forward's)."""
        cache = cache_from_kwargs(kwargs)
        if cache is not None and cache is not forward.cache:
            forward = ForwardInputs(cache, forward.padding, forward.input_ids, forward.position_ids, forward.new_tokens)
        return cls(idx, ModelAdapter.hidden_states(args, kwargs), kwargs.get("position_embeddings"), forward, queries)

    @property
    def cache(self) -> Any:
        """The cache the layer writes to (``None`` for a forward without one)."""
        return self.forward.cache

    @property
    def length(self) -> int:
        """``S``, the tokens of this call."""
        return self.hidden.shape[1]

    @property
    def layer(self) -> Any:
        """The cache's layer ``idx``, or ``None`` when the cache has none (yet)."""
        cache = self.cache
        return None if cache is None or self.idx >= len(cache.layers) else cache.layers[self.idx]

    @property
    def is_prefill(self) -> bool:
        """Whether this call filled an empty layer with a prompt of two tokens or more (else: a decoding step,
        or a prompt continuing a cache)."""
        layer = self.layer
        return (layer is not None and not is_compressed_layer(layer) and layer.get_seq_length() == self.length
                and self.length >= 2)

    def prefill_valid(self) -> torch.Tensor:
        """``(B, T)`` bool padding of this prefill, from the forward's mask (all real when none).

        Raises
        ------
        ValueError
            A mask of another shape than ``(B, T)``, or not left-padded.
        """
        padding, batch = self.forward.padding, self.hidden.shape[0]
        if padding is None:
            return torch.ones(batch, self.length, dtype=torch.bool, device=self.hidden.device)
        if padding.shape != (batch, self.length):
            raise ValueError(
                f"attention_mask must be (batch, prompt_length)={(batch, self.length)} at prefill, got {tuple(padding.shape)}."
            )
        return check_left_padding(padding).to(self.hidden.device)

    def prefill_view(self, adapter: ModelAdapter, valid: torch.Tensor, window: int) -> LayerView:
        """The view of a one-shot prefill's layer: every entry's input and position known."""
        layer = self.layer
        positions = self.forward.position_ids
        if positions is None or positions.shape[-1] != self.length:  # the model counts from 0 in a prefill of an empty cache
            positions = torch.arange(self.length, device=layer.keys.device)[None]
        return adapter.layer_view(self.idx, self.hidden, self.position_embeddings, layer.keys, layer.values, valid, window,
                                  queries=self.queries, positions=positions.expand(valid.shape[0], -1))

    def recent_view(self, adapter: ModelAdapter, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                    window: int, hidden: torch.Tensor | None = None,
                    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                    queries: torch.Tensor | None = None) -> LayerView:
        """The view of held ``(B, Hkv, P, D)`` entries whose last ``S`` inputs are known (this call's, or ``hidden``)."""
        hidden = self.hidden if hidden is None else hidden
        position_embeddings = self.position_embeddings if position_embeddings is None else position_embeddings
        return adapter.layer_view(self.idx, hidden, position_embeddings, keys, values, valid, window,
                                  queries_from=keys.shape[2] - hidden.shape[1], queries=queries)
