"""A dense cache layer that holds only the kept entries and remembers the true sequence length.

transformers asks a cache layer two questions during decoding: how many tokens it has seen
(``get_seq_length``, which fixes the positions of new tokens) and how long its keys are
(``get_mask_sizes``). After eviction the answers differ: ``logical_length`` counts every token
the layer has seen, ``physical_length`` the entries it holds. This is the same split that
transformers' ``DynamicSlidingWindowLayer`` makes for sliding windows.

It follows :class:`~kvpress_lab.cache_layers.protocol.CompressedCacheLayer`: before each attention
call it builds its own mask with transformers' mask builder (so eager, sdpa and flash attention
each get the format they expect), from a padding mask in its logical frame.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from kvpress_lab.cache_layers.protocol import DecodingStep, LayerAttention, causal_layer_attention, no_padding_attention

__all__ = ["CompressedLayer"]


class CompressedLayer(DynamicLayer):
    """Kept entries of one layer, dense ``(B, Hkv, P, D)``, with per-slot validity.

    Parameters
    ----------
    keys, values : torch.Tensor
        ``(B, Hkv, P, D)`` kept entries, in original token order.
    slot_valid : torch.Tensor
        ``(B, P)`` bool: ``False`` on filler slots of rows that kept fewer than ``P`` entries.
    logical_length : int
        Tokens seen by the layer so far (the prompt length ``T`` right after prefill).

    Notes
    -----
    New tokens appended by :meth:`update` take their validity from the step announced by
    :meth:`prepare_decoding` (padding inside the new tokens stays masked); without one, they are real.

    Decoding builds no mask for a layer without filler slots when no new token is padding (one
    new token under ``sdpa``/``eager``: none at all; otherwise one per step and distinct length,
    shared through the step's :class:`~kvpress_lab.cache_layers.protocol.StepMemo`). Whether the layer has
    filler slots is read from the device once, at its first decoding step, then followed
    on the host; appended real columns of :attr:`slot_valid` are materialised only when read.
    """

    is_croppable = False

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        slot_valid: torch.Tensor,
        logical_length: int,
    ):
        super().__init__()
        if keys.shape != values.shape or keys.dim() != 4:
            raise ValueError(f"keys and values must both be (B, Hkv, P, D); got {tuple(keys.shape)} and {tuple(values.shape)}.")
        if slot_valid.shape != (keys.shape[0], keys.shape[2]):
            raise ValueError(f"slot_valid must be (B, P)={(keys.shape[0], keys.shape[2])}, got {tuple(slot_valid.shape)}.")
        if logical_length < keys.shape[2]:
            raise ValueError(f"logical_length={logical_length} cannot be below the physical length {keys.shape[2]}.")
        self.lazy_initialization(keys, values)
        self.keys = keys
        self.values = values
        self.slot_valid = slot_valid.to(dtype=torch.bool, device=keys.device)
        self.logical_length = int(logical_length)
        self._pending_valid: torch.Tensor | None = None  # (B, q) bool, from prepare_decoding; None: all real

    # slot validity: (B, P) bool, with appended all-real columns kept as a count until read
    @property
    def slot_valid(self) -> torch.Tensor:
        """``(B, P)`` bool: ``False`` on filler slots (and on padded tokens appended by decoding)."""
        if self._real_tail:
            tail = torch.ones(self._slot_valid.shape[0], self._real_tail, dtype=torch.bool, device=self._slot_valid.device)
            self._slot_valid = torch.cat([self._slot_valid, tail], dim=-1)
            self._real_tail = 0
        return self._slot_valid

    @slot_valid.setter
    def slot_valid(self, value: torch.Tensor) -> None:
        self._slot_valid = value
        self._real_tail = 0
        self._filler: bool | None = None  # any False slot; None until the first decoding step reads it
        self._signature: tuple | None = None  # (slot validity bytes, logical length then), for shared masks

    @property
    def physical_length(self) -> int:
        """``P``: entries held per KV head (filler slots included)."""
        return self.keys.shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, Hkv, q, D)`` new entries and return the full ``(B, Hkv, P + q, D)`` states."""
        new = key_states.shape[-2]
        valid = self._pending_valid
        self._pending_valid = None
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        if valid is None or valid.shape != (self._slot_valid.shape[0], new):
            self._real_tail += new  # all real: appended when slot_valid is next read
        else:
            # announced as not all real: the layer now has a masked slot (its signature stays valid, see prepare_decoding)
            self._slot_valid = torch.cat([self.slot_valid, valid.to(self._slot_valid.device)], dim=-1)
            self._filler = True
        self.logical_length += new
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Tokens seen (logical length): positions of new tokens continue from here."""
        return self.logical_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(P + q, logical - P)``: the held entries are addressed as the last ``P`` logical slots."""
        return self.physical_length + query_length, self.logical_length - self.physical_length

    def kept_counts(self) -> torch.Tensor:
        """``(B, Hkv)`` int64 on the CPU: real entries per row, the same for every head."""
        counts = self.slot_valid.sum(dim=-1).cpu()  # (B,)
        return counts[:, None].expand(-1, self.keys.shape[1]).contiguous()

    def dense_entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, Hkv, P, D)`` keys and values with ``(B, P)`` slot validity: what chunked prefill re-scores."""
        return self.keys, self.values, self.slot_valid

    def head_entries(self, row: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, D)`` keys and values of ``(row, head)``, filler slots left out."""
        valid = self.slot_valid[row]
        return self.keys[row, head][valid], self.values[row, head][valid]

    def prepare_decoding(self, step: DecodingStep) -> LayerAttention:
        """transformers' causal mask over the held slots: filler slots and padded new tokens masked.

        Without filler slots and padded new tokens this is :func:`~kvpress_lab.cache_layers.protocol.no_padding_attention`
        (no mask at all for one new token under sdpa/eager); otherwise the mask over
        :meth:`virtual_padding_mask`, shared with the step's other layers of the same slot validity.
        """
        all_real = step.new_tokens_all_real()
        self._pending_valid = None if all_real else step.new_tokens_valid()
        if self._filler is None:
            self._filler = not bool(self._slot_valid.all())  # read once; then followed on the host
        if not self._filler and all_real:
            return no_padding_attention(step)
        if self._signature is None:
            self._signature = (self.slot_valid.cpu().numpy().tobytes(), self.logical_length)
        # layers of one cache append the same tokens: equal validity at one length stays equal
        return causal_layer_attention(
            step, lambda: self.virtual_padding_mask(step.new_tokens_valid()), padding_key=("dense", *self._signature)
        )

    def virtual_padding_mask(self, new_valid: torch.Tensor) -> torch.Tensor:
        """A 2-D mask in the logical frame that transformers' mask builders read correctly.

        Returns ``(B, logical + q)`` bool whose last ``P + q`` columns are the slot validity
        followed by ``new_valid`` ``(B, q)``; earlier columns are never read (``kv_offset``).
        """
        prefix = self.logical_length - self.physical_length
        batch = self.slot_valid.shape[0]
        hidden = torch.zeros(batch, prefix, dtype=torch.bool, device=self.slot_valid.device)
        return torch.cat([hidden, self.slot_valid, new_valid.to(self.slot_valid.device, torch.bool)], dim=-1)

    def crop(self, tokens_to_remove: int) -> None:  # noqa: D102
        raise NotImplementedError(
            "A compressed cache layer cannot be cropped (assisted/speculative decoding rolls back tokens "
            "that eviction may already have removed). Decode without an assistant model."
        )

    def reset(self) -> None:  # noqa: D102
        super().reset()
        self.logical_length = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:  # noqa: D102
        super().reorder_cache(beam_idx)
        self.slot_valid = self.slot_valid.index_select(0, beam_idx.to(self.slot_valid.device))

    def batch_repeat_interleave(self, repeats: int) -> None:  # noqa: D102
        super().batch_repeat_interleave(repeats)
        self.slot_valid = self.slot_valid.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:  # noqa: D102
        super().batch_select_indices(indices)
        self.slot_valid = self.slot_valid[indices]

    def nbytes(self) -> int:
        """Bytes held by keys, values and slot metadata."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.slot_valid))
