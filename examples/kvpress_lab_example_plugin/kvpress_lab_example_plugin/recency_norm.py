"""Key norm x recency: a scorer that needs no attention weights, only the cached keys.

Shapes follow kvpress_lab's legend: B batch, Hkv KV heads, T cached tokens, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from kvpress_lab.validation import check_float, check_int

if TYPE_CHECKING:  # torch is imported where scores are computed, so listing strategies stays fast
    import torch

    from kvpress_lab.layer_view import LayerView

__all__ = ["ExampleRecencyNormScorer"]


@dataclass(frozen=True)
class ExampleRecencyNormScorer:
    """Key norm x recency: keep recent tokens and tokens whose key has a small L2 norm.

    Based on https://arxiv.org/abs/2406.11430 (a low key norm predicts high attention) and
    https://arxiv.org/abs/2309.17453 (StreamingLLM: recent tokens matter most).

    Each entry's score is a convex mix of two terms in ``[0, 1]``::

        score[b, h, t] = recency_weight * 0.5 ** ((T - 1 - t) / half_life)
                       + (1 - recency_weight) * (1 - |k[b, h, t]| / max_t' |k[b, h, t']|)

    where the maximum runs over the row's real (non-padding) tokens. The distance ``T - 1 - t``
    to the last prompt token is the same with or without left padding, so a row scores the same
    alone or in a padded batch. Padded positions score 0 (the engine never keeps them anyway).

    Parameters
    ----------
    recency_weight : float
        Weight of the recency term, in ``[0, 1]``: 1 keeps the most recent tokens (a sliding
        window), 0 keeps the smallest-norm keys (K-norm). Default 0.5.
    half_life : int
        Distance, in tokens from the end of the prompt, at which the recency term halves
        (>= 1). Default 64.

    Examples
    --------
    >>> import torch
    >>> from kvpress_lab import LayerView
    >>> keys = torch.ones(1, 2, 4, 8)  # (B, Hkv, T, D): equal norms, so recency decides
    >>> view = LayerView(0, keys, keys, torch.ones(1, 4, dtype=torch.bool), window=1, scaling=1.0,
    ...                  num_query_heads=2, query_fn=lambda a, b: torch.zeros(1, 2, b - a, 8))
    >>> ExampleRecencyNormScorer(recency_weight=1.0, half_life=1).score(view)[0, 0].tolist()
    [0.125, 0.25, 0.5, 1.0]
    """

    # The registry name: unique per role across all installed plugins (hence the prefix).
    name: ClassVar[str] = "example_recency"
    # Hyperparameters are dataclass fields with defaults, so `Recipe(scorer="example_recency")`
    # works as is and `Recipe(scorer_kwargs=...)` can override them.
    recency_weight: float = 0.5
    half_life: int = 64

    def __post_init__(self) -> None:
        # Validate at construction (when a Recipe is built), never on the hot path. The
        # kvpress_lab.validation helpers raise TypeError/ValueError naming the field, the
        # expected range and the value received.
        owner = type(self).__name__
        check_float(owner, "recency_weight", self.recency_weight, minimum=0.0, maximum=1.0)
        check_int(owner, "half_life", self.half_life, minimum=1)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 scores on ``view.device``; higher means keep."""
        import torch

        valid = view.valid[:, None, :]  # (B, 1, T)
        norms = view.keys.float().norm(dim=-1)  # (B, Hkv, T)
        largest = norms.masked_fill(~valid, 0.0).amax(dim=-1, keepdim=True)  # (B, Hkv, 1)
        low_norm = 1.0 - norms / largest.clamp_min(torch.finfo(torch.float32).tiny)  # (B, Hkv, T)
        distance = torch.arange(view.seq_len - 1, -1, -1, device=view.device, dtype=torch.float32)  # (T,)
        recency = torch.pow(0.5, distance / self.half_life)  # (T,), 1 for the last token
        scores = self.recency_weight * recency + (1.0 - self.recency_weight) * low_norm  # (B, Hkv, T)
        return scores.masked_fill(~valid, 0.0)
