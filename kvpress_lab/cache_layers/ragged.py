"""A cache layer where every KV head stores only its own kept entries (per-head budgets, real savings).

Storage is flat: all kept entries of all ``(row, head)`` segments, back to back, ``(N, D)``, with
the segment lengths on the side (the layout flash-attention's variable-length kernel reads).
For attention, :meth:`RaggedLayer.update <kvpress_lab.cache_layers.ragged.RaggedLayer.update>` returns either

* a transient dense ``(B, Hkv, Lmax, D)`` view with each head's entries right-aligned, for
  ``sdpa``/``eager``; the layer gives each head its own mask, so the filler slots are never
  attended, and only one layer's dense view exists at a time; or
* the flat storage itself (``returns_dense_view = False``), for a variable-length kernel
  (:mod:`kvpress_lab.cache_layers.varlen_attention`); no padded copy is made.

:meth:`RaggedLayer.prepare_decoding <kvpress_lab.cache_layers.ragged.RaggedLayer.prepare_decoding>` picks between the two from the attention implementation
(``flash_attention_2``, or a kernel the user passed, routes the call to the varlen function).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from kvpress_lab.cache_layers.protocol import DecodingStep, LayerAttention
from kvpress_lab.cache_layers.varlen_attention import (
    CALL_KWARG,
    RAGGED_VARLEN_IMPLEMENTATION,
    RaggedAttentionCall,
    ragged_kernel_for,
)

__all__ = ["RaggedLayer"]


class RaggedLayer(DynamicLayer):
    """Per-head ragged cache layer.

    Parameters
    ----------
    flat_keys, flat_values : torch.Tensor
        ``(N, D)``: the kept entries of segment ``(b, h)`` (row-major over ``B, Hkv``), each
        segment in original token order.
    lengths : torch.Tensor
        ``(B, Hkv)`` int64 on the CPU: entries per segment.
    logical_length : int
        Tokens seen by the layer (``T`` right after prefill).
    """

    is_croppable = False
    returns_dense_view: bool = True
    """What :meth:`update` returns: the dense padded view (``True``) or the flat storage (``False``).
    Set by :meth:`prepare_decoding` before each attention call, from the attention implementation."""

    def __init__(self, flat_keys: torch.Tensor, flat_values: torch.Tensor, lengths: torch.Tensor, logical_length: int):
        super().__init__()
        if flat_keys.shape != flat_values.shape or flat_keys.dim() != 2:
            raise ValueError(f"flat keys/values must both be (N, D); got {tuple(flat_keys.shape)} and {tuple(flat_values.shape)}.")
        if lengths.dim() != 2 or int(lengths.sum()) != flat_keys.shape[0]:
            raise ValueError(f"lengths must be (B, Hkv) summing to N={flat_keys.shape[0]}, got {lengths.tolist()}.")
        self.lazy_initialization(flat_keys, flat_values)
        self.flat_keys = flat_keys
        self.flat_values = flat_values
        self.lengths = lengths.to("cpu", torch.int64)
        self.logical_length = int(logical_length)
        self.keys = self.flat_keys  # what generic Cache utilities look at; never used densely
        self.values = self.flat_values

    @classmethod
    def from_dense(cls, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, logical_length: int) -> RaggedLayer:
        """Pack ``(B, Hkv, K, D)`` entries whose ``(B, Hkv, K)`` ``valid`` slots are kept."""
        flat_valid = valid.reshape(-1, valid.shape[-1])  # (B*Hkv, K)
        head_dim = keys.shape[-1]
        flat_keys = keys.reshape(-1, keys.shape[-2], head_dim)[flat_valid]  # (N, D), row-major segments
        flat_values = values.reshape(-1, values.shape[-2], head_dim)[flat_valid]
        return cls(flat_keys, flat_values, valid.sum(dim=-1).cpu(), logical_length)

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def num_entries(self) -> int:
        """``N``: kept entries over all rows and heads."""
        return self.flat_keys.shape[0]

    @property
    def physical_length(self) -> int:
        """Longest segment (the dense view's length)."""
        return int(self.lengths.max())

    def get_seq_length(self) -> int:
        """Tokens seen (logical length)."""
        return self.logical_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Sizes of the dense view after appending ``query_length`` tokens."""
        length = self.physical_length + query_length
        return length, self.logical_length + query_length - length

    def nbytes(self) -> int:
        """Bytes held: flat keys and values plus the segment lengths."""
        tensors = (self.flat_keys, self.flat_values, self.lengths)
        return sum(t.numel() * t.element_size() for t in tensors)

    def kept_counts(self) -> torch.Tensor:
        """``(B, Hkv)`` int64 on the CPU: entries per segment."""
        return self.lengths.clone()

    def head_entries(self, row: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, D)`` keys and values of segment ``(row, head)``."""
        heads = self.lengths.shape[1]
        flat = self.lengths.reshape(-1)
        segment = row * heads + head
        start = int(flat[:segment].sum())
        stop = start + int(flat[segment])
        return self.flat_keys[start:stop], self.flat_values[start:stop]

    # -- decoding ------------------------------------------------------------------------------

    def prepare_decoding(self, step: DecodingStep) -> LayerAttention:
        """A per-head mask over the dense view (sdpa/eager), or a routed call to the varlen kernel.

        The varlen path is taken under ``flash_attention_2`` or when ``step.varlen_kernel`` is set;
        any other implementation than ``sdpa``/``eager`` raises :class:`NotImplementedError`.
        """
        kernel = step.varlen_kernel or ragged_kernel_for(step.config._attn_implementation)
        self.returns_dense_view = kernel is None
        if kernel is None:
            return LayerAttention(self.dense_view_mask(step))
        call = RaggedAttentionCall(layer=self, kernel=kernel)
        return LayerAttention(None, attn_implementation=RAGGED_VARLEN_IMPLEMENTATION, extra_kwargs={CALL_KWARG: call})

    def dense_view_mask(self, step: DecodingStep) -> torch.Tensor:
        """``(B, Hq, q, Lmax)`` per-head causal mask over the dense view (sdpa bool, or eager additive)."""
        hidden = step.hidden_states
        query_length = step.query_length
        groups = step.num_query_heads // self.lengths.shape[1]
        valid = self.head_valid(query_length, groups)  # (B, Hq, Lmax)
        width = valid.shape[-1]
        slots = torch.arange(width, device=valid.device)
        last_visible = width - query_length + torch.arange(query_length, device=valid.device)  # (q,)
        mask = valid[:, :, None, :] & (slots[None, :] <= last_visible[:, None])[None, None]  # (B, Hq, q, Lmax)
        if step.config._attn_implementation == "sdpa":
            return mask
        zero = torch.zeros((), dtype=hidden.dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(hidden.dtype).min)

    def head_valid(self, query_length: int, num_groups: int) -> torch.Tensor:
        """``(B, Hq, Lmax)`` bool validity of the dense view after appending ``query_length`` tokens."""
        new_lengths = (self.lengths + query_length).to(self.flat_keys.device)  # (B, Hkv)
        width = int(self.lengths.max()) + query_length
        slots = torch.arange(width, device=self.flat_keys.device)
        valid = slots >= (width - new_lengths)[..., None]  # (B, Hkv, Lmax), right-aligned
        return valid.repeat_interleave(num_groups, dim=1)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, Hkv, q, D)`` to every segment.

        Returns the dense ``(B, Hkv, Lmax, D)`` keys and values view, or the flat ``(N, D)``
        storage when :attr:`returns_dense_view` is ``False``.
        """
        batch, heads, new, head_dim = key_states.shape
        if (batch, heads) != tuple(self.lengths.shape):
            raise ValueError(f"new states are for (B, Hkv)={(batch, heads)}, the layer holds {tuple(self.lengths.shape)}.")
        device = self.flat_keys.device
        old = self.lengths.reshape(-1).to(device)  # (S,)
        segments = torch.arange(old.numel(), device=device)
        old_ends = old.cumsum(0)
        # existing entry i of segment s moves right by new * s; new entries follow each segment's old end
        shift = torch.repeat_interleave(segments * new, old, output_size=self.num_entries)
        dest_old = torch.arange(self.num_entries, device=device) + shift
        dest_new = (old_ends + new * segments)[:, None] + torch.arange(new, device=device)  # (S, q)
        self.flat_keys = _scatter_rows(self.flat_keys, key_states, dest_old, dest_new)
        self.flat_values = _scatter_rows(self.flat_values, value_states, dest_old, dest_new)
        self.keys, self.values = self.flat_keys, self.flat_values
        self.lengths = self.lengths + new
        self.logical_length += new
        if not self.returns_dense_view:
            return self.flat_keys, self.flat_values
        return self._dense(self.flat_keys), self._dense(self.flat_values)

    def _dense(self, flat: torch.Tensor) -> torch.Tensor:
        batch, heads = self.lengths.shape
        lengths = self.lengths.reshape(-1).to(flat.device)  # (S,)
        width = int(self.lengths.max())
        segments = torch.arange(lengths.numel(), device=flat.device)
        starts = lengths.cumsum(0) - lengths
        offset_in_segment = torch.arange(flat.shape[0], device=flat.device) - torch.repeat_interleave(starts, lengths, output_size=flat.shape[0])
        seg_of_entry = torch.repeat_interleave(segments, lengths, output_size=flat.shape[0])
        slot = seg_of_entry * width + (width - lengths)[seg_of_entry] + offset_in_segment
        dense = flat.new_zeros(lengths.numel() * width, flat.shape[-1])
        dense[slot] = flat
        return dense.reshape(batch, heads, width, flat.shape[-1])

    def crop(self, tokens_to_remove: int) -> None:  # noqa: D102
        raise NotImplementedError("A ragged compressed cache layer cannot be cropped (no assisted decoding).")

    def batch_repeat_interleave(self, repeats: int) -> None:  # noqa: D102
        raise NotImplementedError("Expand the batch before prefill (num_return_sequences/beam search are unsupported on ragged caches).")

    def batch_select_indices(self, indices: torch.Tensor) -> None:  # noqa: D102
        raise NotImplementedError("Batch selection is unsupported on ragged caches.")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:  # noqa: D102
        raise NotImplementedError("Beam search is unsupported on ragged caches.")


def _scatter_rows(flat: torch.Tensor, new_states: torch.Tensor, dest_old: torch.Tensor, dest_new: torch.Tensor) -> torch.Tensor:
    out = flat.new_empty(flat.shape[0] + dest_new.numel(), flat.shape[-1])
    out[dest_old] = flat
    out[dest_new.reshape(-1)] = new_states.reshape(-1, flat.shape[-1]).to(flat.dtype)
    return out
