"""A cache layer where every KV head stores only its own kept entries (per-head budgets, real savings).

Storage is flat: all kept entries of all ``(row, head)`` segments, back to back, ``(N, D)``, with
the segment lengths on the side (the layout flash-attention's variable-length kernel reads).
For attention, :meth:`RaggedLayer.update <kvpress_lab.cache_layers.ragged.RaggedLayer.update>` returns either

* a padded ``(B, Hkv, Lmax, D)`` view with each head's entries right-aligned, for
  ``sdpa``/``eager``; the layer gives each head its own mask, so the filler slots are never
  attended. The view is built once, at the first such decoding step, and then *replaces* the flat
  storage: every step appends the ``q`` new entries of every head as columns (each head's
  filler stays where it is, as in a dense layer's ``torch.cat``), so nothing is rebuilt per step.
  It holds ``Lmax`` entries per head (filler included): equal to the flat storage when every head
  keeps the same count, more with per-head budgets (:meth:`RaggedLayer.nbytes <kvpress_lab.cache_layers.ragged.RaggedLayer.nbytes>` counts what is
  held). Its per-head mask depends only on the filler counts, so layers with equal counts share
  one per step, and none is built for one new token when no head has filler; or
* the flat storage itself (``returns_dense_view = False``), for a variable-length kernel
  (:mod:`kvpress_lab.cache_layers.varlen_attention`); no padded copy is made (a padded layer
  goes back to flat storage, once).

:meth:`RaggedLayer.prepare_decoding <kvpress_lab.cache_layers.ragged.RaggedLayer.prepare_decoding>` picks between the two from the attention implementation
(``flash_attention_2``, or a kernel the user passed, routes the call to the varlen function).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from kvpress_lab.cache_layers.protocol import NO_MASK, DecodingStep, LayerAttention
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
        self._padded: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, Hkv, Lmax, D) right-aligned, when decoding densely
        self._flat: tuple[torch.Tensor, torch.Tensor] | None = (flat_keys, flat_values)
        self.lengths = lengths.to("cpu", torch.int64)
        self.logical_length = int(logical_length)
        self.keys = flat_keys  # what generic Cache utilities look at: the storage held (flat or padded)
        self.values = flat_values

    # -- storage: flat (N, D) segments, or the padded view that replaces them while decoding densely

    @property
    def lengths(self) -> torch.Tensor:
        """``(B, Hkv)`` int64 on the CPU: entries per segment."""
        return self._lengths

    @lengths.setter
    def lengths(self, value: torch.Tensor) -> None:
        self._lengths = value
        self._filler_key: tuple[int, ...] | None = None  # Lmax - lengths per segment, computed when asked

    @property
    def flat_keys(self) -> torch.Tensor:
        """``(N, D)`` kept keys, segments back to back (computed from the padded view when that is held)."""
        return self._flat_storage()[0]

    @flat_keys.setter
    def flat_keys(self, value: torch.Tensor) -> None:
        self._set_flat(value, self.flat_values)

    @property
    def flat_values(self) -> torch.Tensor:
        """``(N, D)`` kept values, like :attr:`flat_keys`."""
        return self._flat_storage()[1]

    @flat_values.setter
    def flat_values(self, value: torch.Tensor) -> None:
        self._set_flat(self.flat_keys, value)

    def _set_flat(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._flat, self._padded = (keys, values), None
        self.keys, self.values = keys, values

    def _flat_storage(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._flat is not None:
            return self._flat
        keys, values = self._padded
        valid = self._slot_valid(0).reshape(-1, keys.shape[-2])  # (S, Lmax)
        return tuple(x.reshape(-1, x.shape[-2], x.shape[-1])[valid] for x in (keys, values))  # row-major segments

    def _to_flat(self) -> None:
        """Hold the flat storage (drop the padded view)."""
        if self._flat is None:
            self._set_flat(*self._flat_storage())

    def _to_padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Hold the padded view (built from the flat storage once, which it replaces)."""
        if self._padded is None:
            keys, values = self._flat
            self._padded, self._flat = (self._dense(keys), self._dense(values)), None
            self.keys, self.values = self._padded
        return self._padded

    def _slot_valid(self, query_length: int) -> torch.Tensor:
        """``(B, Hkv, Lmax + q)`` bool on the storage's device: right-aligned validity after appending ``q`` tokens."""
        device = self.keys.device
        width = int(self._lengths.max()) + query_length
        slots = torch.arange(width, device=device)
        return slots >= (width - query_length - self._lengths).to(device)[..., None]

    def filler_counts(self) -> tuple[int, ...]:
        """``Lmax - lengths`` per segment (row-major), host-side: what the per-head mask depends on.

        Appending the same number of tokens to every head leaves it unchanged.
        """
        if self._filler_key is None:
            self._filler_key = tuple((self._lengths.max() - self._lengths).reshape(-1).tolist())
        return self._filler_key

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
        return int(self._lengths.sum())

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
        """Bytes held: flat keys and values (or the padded view, filler included, while it is held) plus the segment lengths."""
        tensors = (*(self._flat if self._flat is not None else self._padded), self.lengths)
        return sum(t.numel() * t.element_size() for t in tensors)

    def kept_counts(self) -> torch.Tensor:
        """``(B, Hkv)`` int64 on the CPU: entries per segment."""
        return self.lengths.clone()

    def head_dense_entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, Hkv, Lmax, D)`` keys and values, right-aligned per head, and their ``(B, Hkv, Lmax)`` validity.

        What a chunked prefill re-scores (:mod:`kvpress_lab.engine.per_head_chunks`); the layer then
        holds the padded view.
        """
        keys, values = self._to_padded()
        return keys, values, self._slot_valid(0)

    def head_entries(self, row: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, D)`` keys and values of segment ``(row, head)``."""
        if self._padded is not None:
            keys, values = self._padded
            start = keys.shape[-2] - int(self.lengths[row, head])
            return keys[row, head, start:], values[row, head, start:]
        heads = self.lengths.shape[1]
        flat = self.lengths.reshape(-1)
        segment = row * heads + head
        start = int(flat[:segment].sum())
        stop = start + int(flat[segment])
        keys, values = self._flat
        return keys[start:stop], values[start:stop]

    # -- decoding ------------------------------------------------------------------------------

    def prepare_decoding(self, step: DecodingStep) -> LayerAttention:
        """A per-head mask over the dense view (sdpa/eager), or a routed call to the varlen kernel.

        The varlen path is taken under ``flash_attention_2`` or when ``step.varlen_kernel`` is set;
        any other implementation than ``sdpa``/``eager`` raises :class:`NotImplementedError`.
        The mask depends only on the width and the filler counts (and on the step: kernel, dtype,
        ``B``, ``q``, new-token padding): it is built once per step for the layers that share them,
        and not at all for one new token when no head has filler (every held entry is attended).
        """
        kernel = step.varlen_kernel or ragged_kernel_for(step.config._attn_implementation)
        self.returns_dense_view = kernel is None
        if kernel is None:
            filler = self.filler_counts()
            if step.query_length == 1 and not any(filler):
                return NO_MASK
            groups = step.num_query_heads // self.lengths.shape[1]
            key = ("ragged", step.mask_key(), groups, filler, int(self.lengths.max()))  # the width: layers differ in length
            return step.memo.get(key, lambda: LayerAttention(self.dense_view_mask(step)))
        if not step.new_tokens_all_real():
            raise NotImplementedError("The varlen path of a ragged layer attends every new token; padded new tokens "
                                      "(a left-padded chunk of a chunked prefill) need sdpa or eager attention.")
        self._to_flat()
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
        if not step.new_tokens_all_real():  # a chunk of a chunked prefill can begin with a row's left padding
            own = torch.eye(query_length, dtype=torch.bool, device=mask.device)  # a padded query sees itself: no empty row
            mask[..., width - query_length :] &= (step.new_tokens_valid()[:, None, :] | own)[:, None]
        if step.config._attn_implementation == "sdpa":
            return mask
        zero = torch.zeros((), dtype=hidden.dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(hidden.dtype).min)

    def head_valid(self, query_length: int, num_groups: int) -> torch.Tensor:
        """``(B, Hq, Lmax)`` bool validity of the dense view after appending ``query_length`` tokens."""
        new_lengths = (self.lengths + query_length).to(self.keys.device)  # (B, Hkv)
        width = int(self.lengths.max()) + query_length
        slots = torch.arange(width, device=self.keys.device)
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
        if self.returns_dense_view:  # append one column per new token to the padded view: no rebuild
            keys, values = self._to_padded()
            self._padded = (torch.cat([keys, key_states.to(keys.dtype)], dim=-2), torch.cat([values, value_states.to(values.dtype)], dim=-2))
            self.keys, self.values = self._padded
            filler = self._filler_key
            self.lengths = self.lengths + new
            self._filler_key = filler  # every head grew by the same count: the filler is where it was
            self.logical_length += new
            return self._padded
        self._to_flat()
        flat_keys, flat_values = self._flat
        device = flat_keys.device
        old = self.lengths.reshape(-1).to(device)  # (S,)
        segments = torch.arange(old.numel(), device=device)
        old_ends = old.cumsum(0)
        # existing entry i of segment s moves right by new * s; new entries follow each segment's old end
        shift = torch.repeat_interleave(segments * new, old, output_size=self.num_entries)
        dest_old = torch.arange(self.num_entries, device=device) + shift
        dest_new = (old_ends + new * segments)[:, None] + torch.arange(new, device=device)  # (S, q)
        self._set_flat(_scatter_rows(flat_keys, key_states, dest_old, dest_new), _scatter_rows(flat_values, value_states, dest_old, dest_new))
        self.lengths = self.lengths + new
        self.logical_length += new
        return self._flat

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
