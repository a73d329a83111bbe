"""Prompt padding: positions of left-padded rows and the one left-padding check."""

from __future__ import annotations

import torch

__all__ = ["padded_positions", "check_left_padding"]


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded rows, as ``generate`` computes them: ``(B, T)`` int64, 0 on padding.

    >>> padded_positions(torch.tensor([[0, 0, 1, 1, 1]])).tolist()
    [[0, 0, 0, 1, 2]]
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def check_left_padding(mask: torch.Tensor) -> torch.Tensor:
    """Return the ``(B, T)`` mask as bool after checking that every row ends with a real token.

    >>> check_left_padding(torch.tensor([[1, 1, 0]]))
    Traceback (most recent call last):
    ...
    ValueError: Only left padding is supported: every row's last prompt token must be real (attention_mask 1).
    """
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("Only left padding is supported: every row's last prompt token must be real (attention_mask 1).")
    return mask.to(torch.bool)
