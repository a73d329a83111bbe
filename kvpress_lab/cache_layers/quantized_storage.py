"""Integer storage of cached keys or values: KIVI-style asymmetric quantization in token blocks.

KIVI (https://arxiv.org/abs/2402.02750, Liu et al., 2024) quantizes keys *per channel* (one scale
and zero point per head dimension, over a group of tokens: outlier channels stay contained) and
values *per token* (one scale and zero point per token, over its head dimension), and keeps the
most recent tokens in full precision until a whole group can be quantized. This module holds one
such sequence, keys or values: quantized blocks of ``group_size`` tokens plus a float residual.

Shapes: ``(B, H, n, D)`` as everywhere in :mod:`kvpress_lab.cache_layers`; ``bits`` is 8 (one
``uint8`` per entry) or 4 (two entries packed per ``uint8``, so ``D`` must be even).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["QUANT_BITS", "QuantizedBlock", "QuantizedSequence", "quantize_block"]

#: Supported integer widths.
QUANT_BITS = (4, 8)


@dataclass(frozen=True)
class QuantizedBlock:
    """``n`` tokens of a ``(B, H, n, D)`` tensor as integers with scales and zero points.

    ``payload`` is ``(B, H, n, D)`` uint8 at 8 bits, ``(B, H, n, D / 2)`` at 4 bits; ``scale`` and
    ``zero`` are ``(B, H, 1, D)`` per channel or ``(B, H, n, 1)`` per token, in the input dtype.
    """

    payload: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int

    @property
    def length(self) -> int:
        return self.payload.shape[-2]

    def dequantize(self) -> torch.Tensor:
        """``(B, H, n, D)`` in the dtype of the scales: ``q * scale + zero``."""
        levels = _unpack(self.payload, self.bits)
        return (levels.to(self.scale.dtype) * self.scale + self.zero).contiguous()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.payload, self.scale, self.zero))


def quantize_block(x: torch.Tensor, bits: int, per: str, valid: torch.Tensor | None = None) -> QuantizedBlock:
    """Asymmetric round-to-nearest quantization of ``x`` ``(B, H, n, D)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, H, n, D)`` floating point.
    bits : {4, 8}
    per : {"channel", "token"}
        ``"channel"``: one scale per ``(B, H, D)`` over the ``n`` tokens (KIVI's keys);
        ``"token"``: one scale per ``(B, H, n)`` over ``D`` (KIVI's values).
    valid : torch.Tensor or None
        ``(B, n)`` bool: tokens that count for the per-channel range (filler slots of a padded row
        must not widen it). ``None``: all.

    Returns
    -------
    QuantizedBlock
        Every valid entry dequantizes to within ``scale / 2`` of ``x`` (plus float rounding).

    Examples
    --------
    >>> x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0], [1.0, 0.5]]]])
    >>> block = quantize_block(x, 8, "channel")
    >>> bool((block.dequantize() - x).abs().max() <= block.scale.max() / 2 + 1e-6)
    True
    """
    if bits not in QUANT_BITS:
        raise ValueError(f"quantization bits must be one of {QUANT_BITS}, got {bits!r}.")
    if x.dim() != 4:
        raise ValueError(f"expected a (B, H, n, D) tensor, got shape {tuple(x.shape)}.")
    if bits == 4 and x.shape[-1] % 2:
        raise ValueError(f"4-bit storage packs two entries per byte and needs an even head dim, got D={x.shape[-1]}.")
    work = x.float()
    if per == "channel":
        if valid is None:
            low, high = work.amin(dim=-2, keepdim=True), work.amax(dim=-2, keepdim=True)
        else:
            mask = valid[:, None, :, None].to(x.device)
            low = torch.where(mask, work, torch.inf).amin(dim=-2, keepdim=True)
            high = torch.where(mask, work, -torch.inf).amax(dim=-2, keepdim=True)
            empty = ~torch.isfinite(low)  # a row with no valid token in this block
            low, high = torch.where(empty, 0.0, low), torch.where(empty, 0.0, high)
    elif per == "token":
        low, high = work.amin(dim=-1, keepdim=True), work.amax(dim=-1, keepdim=True)
    else:
        raise ValueError(f"per must be 'channel' or 'token', got {per!r}.")
    top = (1 << bits) - 1
    scale = (high - low) / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant range: exact through the zero point
    levels = torch.round((work - low) / scale).clamp_(0, top).to(torch.uint8)
    return QuantizedBlock(_pack(levels, bits), scale.to(x.dtype), low.to(x.dtype), bits)


def _pack(levels: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return levels.contiguous()
    return (levels[..., 0::2] | (levels[..., 1::2] << 4)).contiguous()


def _unpack(payload: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return payload
    low, high = payload & 0x0F, payload >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


class QuantizedSequence:
    """One layer's keys *or* values: quantized blocks of ``group_size`` tokens and a float residual.

    Parameters
    ----------
    bits : {4, 8}
    per : {"channel", "token"}
        See :func:`quantize_block`.
    group_size : int
        Tokens per quantized block (KIVI's ``G``).
    residual_length : int
        Appended tokens kept in full precision until this many have accumulated (KIVI's ``R``);
        they are then quantized as one block.
    """

    def __init__(self, bits: int, per: str, group_size: int, residual_length: int):
        self.bits, self.per = bits, per
        self.group_size, self.residual_length = group_size, residual_length
        self.blocks: list[QuantizedBlock] = []
        self.residual: torch.Tensor | None = None  # (B, H, r, D) float, r < residual_length

    def assign(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Replace the content by ``x`` ``(B, H, n, D)``, quantized in blocks of ``group_size`` tokens."""
        self.blocks = []
        for start in range(0, x.shape[-2], self.group_size):
            stop = min(start + self.group_size, x.shape[-2])
            part_valid = None if valid is None else valid[:, start:stop]
            self.blocks.append(quantize_block(x[..., start:stop, :], self.bits, self.per, part_valid))
        self.residual = x[..., :0, :].clone()

    def append(self, x: torch.Tensor) -> None:
        """Add ``(B, H, q, D)`` new tokens to the residual; quantize it once it holds ``residual_length``."""
        self.residual = x if self.residual is None else torch.cat([self.residual, x], dim=-2)
        if self.residual.shape[-2] >= self.residual_length:
            full, self.residual = self.residual, self.residual[..., :0, :]
            for start in range(0, full.shape[-2], self.group_size):
                self.blocks.append(quantize_block(full[..., start:start + self.group_size, :], self.bits, self.per))

    def dequantize(self) -> torch.Tensor:
        """``(B, H, n, D)``: every block dequantized, then the residual."""
        parts = [block.dequantize() for block in self.blocks]
        if self.residual is not None:
            parts.append(self.residual)
        return torch.cat(parts, dim=-2)

    @property
    def length(self) -> int:
        return sum(b.length for b in self.blocks) + (0 if self.residual is None else self.residual.shape[-2])

    def nbytes(self) -> int:
        """Bytes held: integer payloads, scales, zero points and the float residual."""
        residual = 0 if self.residual is None else self.residual.numel() * self.residual.element_size()
        return sum(b.nbytes() for b in self.blocks) + residual
