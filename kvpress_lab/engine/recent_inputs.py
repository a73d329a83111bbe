"""The most recent tokens' attention inputs, kept per layer for decoding-time compression.

Decoding-time compression scores a layer's held entries with the queries of the latest tokens
(the observation window of the generation). Queries are recomputed from the attention module's
input, so each compressible layer keeps the last ``W`` hidden states it received and their rotary
tables: ``W x hidden_size`` floats per row and layer.
"""

from __future__ import annotations

import torch

__all__ = ["RecentInputs"]


class RecentInputs:
    """Last ``window`` attention inputs of one layer: hidden states ``(B, n, H)`` and rotary ``(B, n, D)``.

    >>> recent = RecentInputs(window=2)
    >>> for step in range(3):
    ...     recent.add(torch.full((1, 1, 4), float(step)), (torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)))
    >>> recent.hidden[0, :, 0].tolist(), len(recent)
    ([1.0, 2.0], 2)
    >>> empty = RecentInputs(window=0); empty.add(torch.zeros(1, 3, 4), (torch.zeros(1, 3, 2),) * 2); len(empty)
    0
    """

    def __init__(self, window: int):
        self.window = window
        self.hidden: torch.Tensor | None = None
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.hidden is None else self.hidden.shape[1]

    def reset(self) -> None:
        """Forget everything (a new prompt starts)."""
        self.hidden = self.cos = self.sin = None

    def add(self, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Append ``(B, q, H)`` inputs with their ``(B or 1, q, D)`` rotary tables; keep the last ``window``."""
        cos, sin = (t.expand(hidden.shape[0], -1, -1) for t in position_embeddings)
        if self.hidden is None or self.hidden.shape[0] != hidden.shape[0]:
            self.hidden, self.cos, self.sin = hidden, cos, sin
        else:
            self.hidden = torch.cat([self.hidden, hidden], dim=1)
            self.cos = torch.cat([self.cos, cos], dim=1)
            self.sin = torch.cat([self.sin, sin], dim=1)
        self.hidden, self.cos, self.sin = (_last(t, self.window) for t in (self.hidden, self.cos, self.sin))


def _last(tensor: torch.Tensor, window: int) -> torch.Tensor:
    """The last ``window`` positions of ``(B, n, X)`` in storage of their own: a slice of a prefill's
    ``(B, T, H)`` input would keep all ``T`` rows alive (at T = 8192 on the embedded model, 566 MiB
    over 30 layers, held until the session ends)."""
    if tensor.shape[1] <= window:
        return tensor.detach()
    return tensor[:, tensor.shape[1] - window :].detach().clone()  # not [-window:]: window 0 keeps nothing
