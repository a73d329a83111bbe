"""Random scoring: the floor every informed scorer must beat."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_bool, check_int

__all__ = ["RandomScorer"]


@dataclass(frozen=True)
class RandomScorer:
    """Random: uniform scores in ``[0, 1)``, reproducible per ``(seed, layer)``.

    Based on no paper: the control baseline of kvpress's ``RandomPress``
    (https://github.com/NVIDIA/kvpress), the floor every informed scorer must beat.

    Parameters
    ----------
    seed : int
        Seed, ``>= 0``. Default 0. Each layer draws from its own ``torch.Generator`` created on
        the view's device and seeded from ``(seed, layer_idx)``; the same seed gives the same
        scores on the same device type (CPU and CUDA streams differ).
    per_layer : bool
        Mix the layer index into the seed (default ``True``). ``False`` seeds every layer's
        generator with ``seed`` itself, kvpress's ``RandomPress(seed=...)``: every layer draws the
        same numbers.

    Notes
    -----
    The module is named ``random_scorer`` rather than ``random`` so that running a file of this
    folder as a script (``python -m doctest scorers/knorm.py``) never shadows the standard library.
    """

    name: ClassVar[str] = "random"
    chunked_prefill: ClassVar[bool] = True  # scores from the held entries and the current chunk's queries
    seed: int = 0
    per_layer: bool = True

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "seed", self.seed, minimum=0)
        check_bool(type(self).__name__, "per_layer", self.per_layer)

    def score(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` float32 uniform scores drawn on ``view.device``."""
        generator = torch.Generator(device=view.device)
        generator.manual_seed(layer_seed(self.seed, view.layer_idx) if self.per_layer else self.seed)
        shape = (view.batch_size, view.num_kv_heads, view.seq_len)
        return torch.rand(shape, generator=generator, dtype=torch.float32, device=view.device)


def layer_seed(seed: int, layer_idx: int) -> int:
    """A 64-bit seed mixing ``seed`` and ``layer_idx`` (stable across processes and platforms).

    >>> layer_seed(0, 1) != layer_seed(1, 0)
    True
    """
    digest = hashlib.blake2b(f"kvpress_lab.random:{seed}:{layer_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
