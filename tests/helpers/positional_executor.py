"""A third-party executor with its own layer class, written only against the public contracts.

``test_positional`` keeps the same top-k as ``gather`` (it reuses
:func:`~kvpress_lab.executors.select_top_k`) but stores the kept entries with their original
token positions and builds its own explicit attention masks, without transformers' mask builder.
It is the example of the "write an executor" how-to, and the conformance suite runs it beside the
built-ins: the engine must decode it correctly without knowing its type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers.cache_utils import DynamicLayer

from kvpress_lab import hookimpl
from kvpress_lab.cache_layers import DecodingStep, LayerAttention
from kvpress_lab.executors import select_top_k
from kvpress_lab.protocols import Selection


class PositionalLayer(DynamicLayer):
    """Kept entries ``(B, Hkv, K, D)`` with their original positions ``(B, K)`` (``-1`` on filler slots)."""

    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, logical_length: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.positions = positions  # (B, K) int64, -1 on filler slots
        self.logical_length = logical_length
        self._new_valid: torch.Tensor | None = None

    @property
    def physical_length(self) -> int:
        return self.keys.shape[-2]

    def update(self, key_states, value_states, *args, **kwargs):
        new = key_states.shape[-2]
        start = self.logical_length
        fresh = torch.arange(start, start + new, device=self.positions.device).expand(self.positions.shape[0], -1)
        if self._new_valid is not None:  # padded new tokens stay masked forever
            fresh = fresh.masked_fill(~self._new_valid.to(fresh.device), -1)
        self._new_valid = None
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.positions = torch.cat([self.positions, fresh], dim=-1)
        self.logical_length += new
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.logical_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.physical_length + query_length, self.logical_length - self.physical_length

    def kept_counts(self) -> torch.Tensor:
        counts = (self.positions >= 0).sum(dim=-1).cpu()  # (B,)
        return counts[:, None].expand(-1, self.keys.shape[1]).contiguous()

    def head_entries(self, row: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        held = self.positions[row] >= 0
        return self.keys[row, head][held], self.values[row, head][held]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.positions))

    def prepare_decoding(self, step: DecodingStep) -> LayerAttention:
        """``(B, 1, q, K + q)``: a query at position ``p`` sees held entries at positions ``<= p``."""
        implementation = step.config._attn_implementation
        if implementation not in ("sdpa", "eager"):
            raise NotImplementedError(f"test_positional decodes with sdpa or eager attention, got {implementation!r}.")
        self._new_valid = step.new_tokens_valid()
        start = self.logical_length
        query_positions = torch.arange(start, start + step.query_length, device=self.positions.device)  # (q,)
        fresh = query_positions.expand(self.positions.shape[0], -1).masked_fill(~self._new_valid.to(self.positions.device), -1)
        positions = torch.cat([self.positions, fresh], dim=-1)  # (B, K + q)
        visible = (positions[:, None, :] >= 0) & (positions[:, None, :] <= query_positions[None, :, None])  # (B, q, K+q)
        mask = visible[:, None]  # (B, 1, q, K + q)
        if implementation == "eager":
            dtype = step.hidden_states.dtype
            mask = torch.where(mask, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))
        return LayerAttention(mask.to(step.hidden_states.device))


@dataclass(frozen=True)
class PositionalExecutor:
    """Test executor: gather's selection, a layer that keeps positions and builds its own masks."""

    name: ClassVar[str] = "test_positional"
    per_head_budgets: ClassVar[bool] = False

    def select(self, scores, keep, forced, candidates) -> Selection:
        return select_top_k(scores, keep, forced, candidates)

    def build_layer(self, keys, values, selection: Selection, logical_length: int) -> PositionalLayer:
        index = selection.indices[..., None].expand(-1, -1, -1, keys.shape[-1])  # (B, Hkv, K, D)
        positions = selection.indices[:, 0].masked_fill(~selection.valid[:, 0], -1)  # (B, K)
        return PositionalLayer(torch.gather(keys, 2, index), torch.gather(values, 2, index), positions, logical_length)


class PositionalExecutorPlugin:
    """The plugin object registering :class:`PositionalExecutor`."""

    @hookimpl
    def kvpress_lab_register_executors(self):
        return [PositionalExecutor]
