"""StreamingLLM scoring: keep the attention sinks and the most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.sinks import AttentionSinks
from kvpress_lab.validation import check_int

__all__ = ["SinkScorer"]


@dataclass(frozen=True)
class SinkScorer(AttentionSinks):
    """StreamingLLM: the first ``num_sinks`` real tokens (attention sinks) plus the most recent ones.

    Based on https://arxiv.org/abs/2309.17453 (Efficient Streaming Language Models with Attention Sinks).

    Parameters
    ----------
    num_sinks : int
        Leading real tokens always kept, ``>= 0``. Default 4, as in the paper.

    Notes
    -----
    Scores are recency, the position index as float32 (exact up to ``2**24`` tokens), so top-k
    keeps the latest tokens; :meth:`~kvpress_lab.sinks.AttentionSinks.forced_keep` marks the sinks. With a budget ``k`` per layer the
    executor keeps exactly the sinks and the last ``k - num_sinks`` tokens (the budget must cover
    the sinks and the observation window). Sinks are counted from each row's first real token,
    so left padding is never kept.

    Examples
    --------
    >>> keys = torch.zeros(1, 1, 6, 2)
    >>> valid = torch.tensor([[False, False, True, True, True, True]])
    >>> view = LayerView(0, keys, keys, valid, window=1, scaling=1.0, num_query_heads=1,
    ...                  query_fn=lambda a, b: torch.zeros(1, 1, b - a, 2))
    >>> SinkScorer(num_sinks=2).forced_keep(view).int().tolist()
    [[[0, 0, 1, 1, 0, 0]]]
    """

    name: ClassVar[str] = "sink"
    chunked_prefill: ClassVar[bool] = True  # scores from the held entries and the current chunk's queries
    num_sinks: int = 4

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "num_sinks", self.num_sinks, minimum=0)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 recency: entry ``t`` scores ``t``."""
        positions = torch.arange(view.seq_len, dtype=torch.float32, device=view.device)  # (T,)
        return positions.repeat(view.batch_size, view.num_kv_heads, 1)  # (B, Hkv, T)
