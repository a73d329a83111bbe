"""Test-only strategies registered into the process registry through a fixture."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from kvpress_lab import hookimpl
from kvpress_lab.layer_view import LayerView
from kvpress_lab.protocols import BudgetRequest


@dataclass(frozen=True)
class HandScorer:
    """Scores given by hand: ``scores[t]`` for every row, head and layer (padded frame)."""

    name: ClassVar[str] = "test_hand"
    scores: list = field(default_factory=list)

    def score(self, view: LayerView) -> torch.Tensor:
        values = torch.tensor(self.scores, dtype=torch.float32, device=view.device)
        if values.numel() != view.seq_len:
            raise ValueError(f"HandScorer has {values.numel()} scores for T={view.seq_len}")
        return values.expand(view.batch_size, view.num_kv_heads, -1).clone()


@dataclass(frozen=True)
class RowAwareHandScorer:
    """Scores by hand in each row's *unpadded* frame: ``scores[t - pad_b]`` (row compressed alone == in batch)."""

    name: ClassVar[str] = "test_hand_unpadded"
    scores: list = field(default_factory=list)

    def score(self, view: LayerView) -> torch.Tensor:
        values = torch.tensor(self.scores, dtype=torch.float32, device=view.device)
        out = torch.zeros(view.batch_size, view.num_kv_heads, view.seq_len, device=view.device)
        for b in range(view.batch_size):
            n = int(view.valid[b].sum())
            out[b, :, view.seq_len - n:] = values[:n]
        return out


@dataclass(frozen=True)
class StaircaseAllocator:
    """Layer ``l`` keeps ``budget + step * (L - 1 - 2 l) // 2`` entries: a symmetric staircase around the budget."""

    name: ClassVar[str] = "test_staircase"
    scope: ClassVar[str] = "static"
    step: int = 4

    def allocate(self, request: BudgetRequest) -> list[int]:
        L = request.num_layers
        raw = [request.budget + self.step * (L - 1 - 2 * layer) // 2 for layer in range(L)]
        return [max(request.min_kept, min(b, request.prompt_length)) for b in raw]


class TestPlugin:
    @hookimpl
    def kvpress_lab_register_scorers(self):
        return [HandScorer, RowAwareHandScorer]

    @hookimpl
    def kvpress_lab_register_allocators(self):
        return [StaircaseAllocator]


WINDOW_ATTENTION: dict[int, torch.Tensor] = {}


@dataclass(frozen=True)
class RecordingScorer:
    """Records ``window_attention(view)`` per layer (to compare with the model's own attention)."""

    name: ClassVar[str] = "test_recording"

    def score(self, view: LayerView) -> torch.Tensor:
        from kvpress_lab.attention import window_attention

        WINDOW_ATTENTION[view.layer_idx] = window_attention(view)
        return torch.zeros(view.batch_size, view.num_kv_heads, view.seq_len, device=view.device)


VIEWS: dict[int, LayerView] = {}


@dataclass(frozen=True)
class ViewRecordingScorer:
    """Keeps the last :class:`LayerView` of every layer in ``VIEWS`` (to test what the contract carries)."""

    name: ClassVar[str] = "test_views"

    def score(self, view: LayerView) -> torch.Tensor:
        VIEWS[view.layer_idx] = view
        return torch.zeros(view.batch_size, view.num_kv_heads, view.seq_len, device=view.device)


TestPlugin.kvpress_lab_register_scorers = hookimpl(
    lambda self: [HandScorer, RowAwareHandScorer, RecordingScorer, ViewRecordingScorer]
)
