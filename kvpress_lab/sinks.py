"""Attention sinks, one concept: the first ``num_sinks`` real tokens of every row.

StreamingLLM (https://arxiv.org/abs/2309.17453) keeps the first tokens of a sequence because
attention piles up on them whatever they say. Every scorer that knows sinks calls their count
``num_sinks`` (a dataclass field; the old name ``n_sink`` is still read from a recipe's
``scorer_kwargs``, with a :class:`DeprecationWarning`), and the engine reads it as the scorer
capability ``num_sinks`` (:data:`kvpress_lab.capabilities.SCORER`). A scorer that keeps its sinks
whatever their scores mixes in :class:`AttentionSinks`: they are its ``forced_keep`` entries, and
its ``minimum_budget`` counts them.

>>> sink_entries(torch.tensor([[False, True, True, True]]), 2, num_kv_heads=1).int().tolist()
[[[0, 1, 1, 0]]]
"""

from __future__ import annotations

import torch

from kvpress_lab.layer_view import LayerView

__all__ = ["sink_entries", "AttentionSinks", "RENAMED_FIELDS"]

#: Old hyperparameter names a recipe still reads, with a :class:`DeprecationWarning`: old -> new.
RENAMED_FIELDS = {"n_sink": "num_sinks"}


def sink_entries(valid: torch.Tensor, num_sinks: int, num_kv_heads: int) -> torch.Tensor:
    """``(B, Hkv, T)`` bool: ``True`` on the first ``num_sinks`` real tokens of each row of ``valid`` ``(B, T)``."""
    sinks = valid & (valid.long().cumsum(dim=-1) <= num_sinks)  # (B, T): counted from each row's first real token
    return sinks[:, None, :].expand(-1, num_kv_heads, -1).contiguous()


class AttentionSinks:
    """Mixin for a dataclass scorer with a ``num_sinks`` field: its sinks are kept whatever their scores."""

    def minimum_budget(self, window: int) -> int:
        """Smallest budget holding the sinks and the observation window: ``num_sinks + window``."""
        return self.num_sinks + window

    def forced_keep(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` bool: the first ``num_sinks`` real tokens of each row."""
        return sink_entries(view.valid.to(view.device), self.num_sinks, view.num_kv_heads)
