"""A dense compressed layer whose kept keys and values are stored as 8- or 4-bit integers (KIVI-style).

Eviction and quantization compose: the executor keeps ``K`` entries per head, and this layer stores
them with keys quantized per channel and values per token (:mod:`kvpress_lab.cache_layers.quantized_storage`),
in blocks of ``group_size`` tokens. Tokens appended while decoding stay in full precision until
``residual_length`` of them have accumulated, then become one more quantized block. Attention reads
the dequantized keys and values (``keys``/``values`` dequantize on access), so one layer's float copy
exists transiently during its attention call; what the cache *holds* is the integers, their scales
and zero points, and the float residual (:meth:`~kvpress_lab.cache_layers.QuantizedLayer.nbytes`).
"""

from __future__ import annotations

import torch

from kvpress_lab.cache_layers.dense import CompressedLayer
from kvpress_lab.cache_layers.quantized_storage import QUANT_BITS, QuantizedSequence

__all__ = ["QuantizedLayer"]


class QuantizedLayer(CompressedLayer):
    """:class:`~kvpress_lab.cache_layers.dense.CompressedLayer` with integer storage.

    Parameters
    ----------
    keys, values : torch.Tensor
        ``(B, Hkv, P, D)`` kept entries, in original token order (quantized on construction).
    slot_valid : torch.Tensor
        ``(B, P)`` bool, see :class:`CompressedLayer`; filler slots do not widen the key ranges.
    logical_length : int
        Tokens seen so far.
    bits : {8, 4}
        Integer width; at 4 bits two entries share a byte (``D`` must be even).
    group_size : int
        Tokens per quantized block.
    residual_length : int
        Appended tokens kept in float before they are quantized as a block.

    Notes
    -----
    Assigning ``layer.keys`` / ``layer.values`` (transformers does so when reordering beams or
    selecting batch rows) re-quantizes the assigned tensor, residual included.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slot_valid: torch.Tensor, logical_length: int,
                 bits: int = 8, group_size: int = 32, residual_length: int = 32):
        if bits not in QUANT_BITS:
            raise ValueError(f"QuantizedLayer bits must be one of {QUANT_BITS}, got {bits!r}.")
        self._key_store = QuantizedSequence(bits, "channel", group_size, residual_length)
        self._value_store = QuantizedSequence(bits, "token", group_size, residual_length)
        self._assign_valid: torch.Tensor | None = slot_valid.to(dtype=torch.bool, device=keys.device)
        super().__init__(keys, values, slot_valid, logical_length)
        self._assign_valid = None
        self.bits = bits

    # keys and values live in the two stores; reading dequantizes, assigning quantizes.
    @property
    def keys(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self._key_store.residual is None else self._key_store.dequantize()

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._store(self._key_store, value)

    @property
    def values(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self._value_store.residual is None else self._value_store.dequantize()

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._store(self._value_store, value)

    def _store(self, store: QuantizedSequence, value: torch.Tensor | None) -> None:
        if value is None:
            store.blocks, store.residual = [], None
            return
        if value.dim() != 4:  # transformers' lazy initialisation assigns an empty 1-D tensor first
            store.blocks, store.residual = [], None
            return
        valid = self._assign_valid if self._assign_valid is not None else getattr(self, "slot_valid", None)
        if valid is not None and valid.shape != (value.shape[0], value.shape[2]):
            valid = None
        store.assign(value, valid)

    @property
    def physical_length(self) -> int:
        """``P``: entries held per KV head (filler slots included)."""
        return self._key_store.length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, Hkv, q, D)`` new entries (float residual) and return the dequantized ``(B, Hkv, P + q, D)``."""
        new = key_states.shape[-2]
        valid = self._pending_valid
        if valid is None or valid.shape != (self.slot_valid.shape[0], new):
            valid = torch.ones(self.slot_valid.shape[0], new, dtype=torch.bool, device=self.slot_valid.device)
        self._pending_valid = None
        self._key_store.append(key_states)
        self._value_store.append(value_states)
        self.slot_valid = torch.cat([self.slot_valid, valid.to(self.slot_valid.device)], dim=-1)
        self.logical_length += new
        return self._key_store.dequantize(), self._value_store.dequantize()

    def nbytes(self) -> int:
        """Bytes held: integer payloads, scales and zero points, the float residual, slot metadata."""
        return self._key_store.nbytes() + self._value_store.nbytes() + self.slot_valid.numel() * self.slot_valid.element_size()
