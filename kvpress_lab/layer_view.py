"""What a scorer sees of one attention layer at the end of prefill.

Shape legend (used throughout kvpress_lab):

====  =====================================================
B     batch size
Hq    query heads
Hkv   key/value heads
G     Hq / Hkv, query heads per KV head (grouped-query attention)
T     cached tokens (the prompt length, padding included)
W     observation window (the last W prompt tokens)
D     head dimension
L     number of compressible layers
====  =====================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

__all__ = ["LayerView"]

QueryFn = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True, eq=False)
class LayerView:
    """One attention layer's cache and inputs, as handed to a :class:`~kvpress_lab.protocols.Scorer`.

    Parameters
    ----------
    layer_idx : int
        Index of the layer in the model (0-based).
    keys, values : torch.Tensor
        ``(B, Hkv, T, D)``: the layer's full cache after prefill, rotary already applied to keys.
    valid : torch.Tensor
        ``(B, T)`` bool: ``True`` for real tokens, ``False`` for left padding.
    window : int
        ``W``, the observation window (clamped to ``T``).
    scaling : float
        The attention's softmax scale (``1/sqrt(D)`` for most families).
    num_query_heads : int
        ``Hq``.
    query_fn : Callable[[int, int], torch.Tensor]
        ``query_fn(start, stop)`` recomputes the queries of prompt tokens ``start:stop`` from the
        attention module's own input: ``(B, Hq, stop - start, D)``, rotary applied. Queries are
        recomputed on demand so that a scorer needing all of them (H2O) can work in chunks.
    output_projection : torch.Tensor or None
        ``(hidden_size, Hq * D)``: the weight of the attention's output projection ``W_o`` (an
        ``nn.Linear`` weight, query head ``h`` reads columns ``h*D:(h+1)*D``), for scorers that
        weigh entries by what their values contribute to the layer's output (CriticalKV).
        ``None`` when the view was built without it; scorers that do not need it never read it.

    Examples
    --------
    >>> import torch
    >>> keys = torch.zeros(1, 2, 5, 4)
    >>> view = LayerView(0, keys, keys, torch.ones(1, 5, dtype=torch.bool), window=2, scaling=0.5,
    ...                  num_query_heads=4, query_fn=lambda a, b: torch.zeros(1, 4, b - a, 4))
    >>> view.window_queries.shape
    torch.Size([1, 4, 2, 4])
    >>> view.num_groups
    2
    """

    layer_idx: int
    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    window: int
    scaling: float
    num_query_heads: int
    query_fn: QueryFn = field(repr=False)
    output_projection: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.keys.shape[0]

    @property
    def num_kv_heads(self) -> int:
        """``Hkv``."""
        return self.keys.shape[1]

    @property
    def num_groups(self) -> int:
        """``G = Hq / Hkv``."""
        return self.num_query_heads // self.num_kv_heads

    @property
    def seq_len(self) -> int:
        """``T`` (padding included)."""
        return self.keys.shape[2]

    @property
    def device(self) -> torch.device:
        """The layer's device: every tensor a scorer returns must live here."""
        return self.keys.device

    def queries(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Queries of prompt tokens ``start:stop``: ``(B, Hq, stop - start, D)``."""
        stop = self.seq_len if stop is None else stop
        if not 0 <= start <= stop <= self.seq_len:
            raise ValueError(f"query range must satisfy 0 <= start <= stop <= T={self.seq_len}, got {start}:{stop}.")
        return self.query_fn(start, stop)

    @cached_property
    def window_queries(self) -> torch.Tensor:
        """Queries of the observation window: ``(B, Hq, W, D)``."""
        return self.queries(self.seq_len - self.window, self.seq_len)
