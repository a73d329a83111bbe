"""TOVA scoring: what the last prompt token attends to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.attention import attention_probs, reduce_groups
from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_choice

__all__ = ["TOVAScorer"]


@dataclass(frozen=True)
class TOVAScorer:
    """TOVA: attention of the last prompt query only, averaged over the query heads of a group.

    Based on https://arxiv.org/abs/2401.06104 (Transformers are Multi-State RNNs).

    Parameters
    ----------
    heads : {"group", "all"}
        Which query heads a KV head's score averages: ``"group"`` (default) the ``G`` heads it
        serves, so each KV head keeps what its own queries attend to; ``"all"``, kvpress's
        ``TOVAPress``: the mean over all ``Hq`` heads, one score shared by every KV head.

    Notes
    -----
    Float32 softmax, padding never attended. The last prompt token itself is kept by the
    observation window (``W >= 1``; kvpress scores it ``max + 1``, which keeps it too).

    Examples
    --------
    >>> keys = torch.tensor([[[[0.0], [1.0], [2.0]]]])  # (B=1, Hkv=1, T=3, D=1)
    >>> view = LayerView(0, keys, keys, torch.ones(1, 3, dtype=torch.bool), window=1, scaling=1.0,
    ...                  num_query_heads=1, query_fn=lambda a, b: torch.zeros(1, 1, b - a, 1))
    >>> TOVAScorer().score(view)  # a zero query attends uniformly
    tensor([[[0.3333, 0.3333, 0.3333]]])
    """

    name: ClassVar[str] = "tova"
    chunked_prefill: ClassVar[bool] = True  # scores from the held entries and the current chunk's queries
    heads: str = "group"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "heads", self.heads, ("group", "all"))

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 attention of the last prompt query."""
        last = view.seq_len - 1
        probs = attention_probs(view.queries(last, view.seq_len), view.keys, view.valid, last, view.scaling)  # (B, Hq, 1, T)
        if self.heads == "all":  # kvpress: mean over every query head, repeated for each KV head
            return probs[:, :, 0].mean(dim=1, keepdim=True).expand(-1, view.num_kv_heads, -1).contiguous()
        return reduce_groups(probs[:, :, 0], view.num_kv_heads, "mean")  # (B, Hkv, T)
