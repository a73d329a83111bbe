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
from typing import Protocol, runtime_checkable

import torch

from kvpress_lab.attention_weights import attention_probs

__all__ = ["LayerView", "LayerInputs"]

QueryFn = Callable[[int, int], torch.Tensor]


@runtime_checkable
class LayerInputs(Protocol):
    """What a view knows of the attention module's input: hidden states and the module's projections.

    The engine builds one per scored layer (:class:`kvpress_lab.engine.families.ModuleInputs`);
    third-party code reads it through :class:`LayerView`'s methods, never directly.

    Attributes
    ----------
    hidden : torch.Tensor
        ``(B, S, hidden_size)``: the attention module's input for cached entries ``offset:T``.
    offset : int
        First cached entry whose input is held (``0`` in a one-shot prefill; the chunk's first
        entry in a chunked prefill; the first recent token in decoding-time compression).
    """

    hidden: torch.Tensor
    offset: int

    def prerope_queries(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, n, hidden_size) -> (B, Hq, n, D)``: queries before the rotary embedding (q-norm applied)."""
        ...

    def prerope_keys(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, n, hidden_size) -> (B, Hkv, n, D)``: keys before the rotary embedding (k-norm applied)."""
        ...

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B or 1, n)`` int64 positions -> the layer's ``(cos, sin)`` tables, each ``(B or 1, n, R)``."""
        ...


@dataclass(frozen=True, eq=False)
class LayerView:
    """One attention layer's cache and inputs, as handed to a :class:`~kvpress_lab.protocols.Scorer`.

    This is the one contract a scorer codes against. The tensors are those of the layer's
    device; everything beyond the cache itself is computed lazily, on demand, in the pieces a
    scorer asks for, so a scorer pays only for what it reads:

    ===============================================  ===============================================
    what a method reads                              how
    ===============================================  ===============================================
    cached keys (rotary applied) and values          ``keys``, ``values`` ``(B, Hkv, T, D)``
    which entries are real                           ``valid`` ``(B, T)``
    queries of any range, with or without rotary     :meth:`queries` ``(start, stop, rotated=...)``
    keys before the rotary embedding                 :meth:`prerope_keys`
    the attention module's input hidden states       :meth:`hidden_states`
    attention weights of a query range               :meth:`attention_weights` (call it per block)
    positions of the cached entries, the next one    ``positions``, :attr:`next_positions`
    rotary tables of any position (future ones too)  :meth:`rotary`, with :mod:`kvpress_lab.rotary`
    the output projection ``W_o``                    ``output_projection``
    ===============================================  ===============================================

    Inputs (hidden states, and so queries and pre-RoPE keys) exist for the entries whose
    attention input the engine still holds: every prompt token in a one-shot prefill, the current
    chunk in a chunked prefill, the most recent tokens in decoding-time compression. Asking for
    earlier ones raises a :class:`ValueError` naming the limit; so does asking for what a view
    built by hand (without :class:`LayerInputs`) does not carry.

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
    inputs : LayerInputs or None
        The module's input hidden states and projections (pre-RoPE queries and keys, rotary
        tables); ``None`` for a view built by hand.
    positions : torch.Tensor or None
        ``(B, T)`` int64 positions of the cached entries (the prompt's position ids; left padding
        as the model ran it). ``None`` where the engine does not know them per entry (entries
        kept from earlier chunks of a chunked prefill, decoding-time compression).

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
    >>> view.attention_weights(3, 5).shape  # (B, Hq, 2 queries, T)
    torch.Size([1, 4, 2, 5])
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
    inputs: LayerInputs | None = field(default=None, repr=False)
    positions: torch.Tensor | None = field(default=None, repr=False)

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
    def head_dim(self) -> int:
        """``D``."""
        return self.keys.shape[3]

    @property
    def device(self) -> torch.device:
        """The layer's device: every tensor a scorer returns must live here."""
        return self.keys.device

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.seq_len if stop is None else stop
        if not 0 <= start <= stop <= self.seq_len:
            raise ValueError(f"entry range must satisfy 0 <= start <= stop <= T={self.seq_len}, got {start}:{stop}.")
        return start, stop

    def _inputs(self, what: str) -> LayerInputs:
        if self.inputs is None:
            raise ValueError(
                f"this LayerView of layer {self.layer_idx} carries no attention inputs, so it cannot give {what}; "
                "views built by the engine (ModelAdapter.layer_view) carry them."
            )
        return self.inputs

    def queries(self, start: int = 0, stop: int | None = None, *, rotated: bool = True) -> torch.Tensor:
        """Queries of prompt tokens ``start:stop``: ``(B, Hq, stop - start, D)``.

        ``rotated=False`` gives them before the rotary embedding (after the q-norm of the families
        that have one), as the module's projection computes them.
        """
        start, stop = self._range(start, stop)
        if rotated:
            return self.query_fn(start, stop)
        return self._inputs("pre-RoPE queries").prerope_queries(self.hidden_states(start, stop))

    def prerope_keys(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Keys of entries ``start:stop`` before the rotary embedding: ``(B, Hkv, stop - start, D)``.

        Recomputed from the module's input with its own projection (and k-norm), so a float32
        result is bit-identical to what the module computed before rotating. For any entry whose
        position is known, :func:`kvpress_lab.rotary.undo_rotary` on the cached key with
        ``self.rotary(positions)`` gives the same up to rounding.
        """
        start, stop = self._range(start, stop)
        return self._inputs("pre-RoPE keys").prerope_keys(self.hidden_states(start, stop))

    def hidden_states(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The attention module's input for entries ``start:stop``: ``(B, stop - start, hidden_size)``."""
        start, stop = self._range(start, stop)
        inputs = self._inputs("hidden states")
        if start < inputs.offset:
            raise ValueError(
                f"the attention inputs of cached entries before {inputs.offset} are gone (entries kept from earlier "
                f"chunks of a chunked prefill, or decoded before the most recent ones); asked for {start}:{stop}. A "
                "scorer that needs them cannot score chunked prefills or decoding-time compression."
            )
        return inputs.hidden[:, start - inputs.offset : stop - inputs.offset]

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's rotary tables at any ``(B or 1, n)`` int64 positions: ``(cos, sin)``, each ``(B or 1, n, R)``.

        Computed by the model's own rotary module (every scaling rule and per-layer base honoured),
        future positions included; apply them with :func:`kvpress_lab.rotary.apply_rotary`.
        """
        if not isinstance(positions, torch.Tensor) or positions.dim() != 2:
            raise ValueError(f"positions must be a (B or 1, n) int64 tensor, got {positions!r}.")
        return self._inputs("rotary tables").rotary(positions.to(self.device, torch.int64))

    @property
    def next_positions(self) -> torch.Tensor:
        """``(B,)`` int64: the position the next token of each row takes (the last entry's plus one)."""
        if self.positions is None:
            raise ValueError(
                f"this LayerView of layer {self.layer_idx} does not know its entries' positions (views of a chunked "
                "prefill or of decoding-time compression do not track them); a scorer that needs them scores one-shot "
                "prefills only."
            )
        return self.positions[:, -1] + 1

    def attention_weights(self, start: int, stop: int | None = None) -> torch.Tensor:
        """Causal softmax attention of the queries ``start:stop`` over every entry: ``(B, Hq, stop - start, T)`` float32.

        Padding is never attended; rows of padded queries are zero. Memory grows with
        ``(stop - start) * T``: ask for blocks of queries, not for all of them at once.
        """
        start, stop = self._range(start, stop)
        return attention_probs(self.queries(start, stop), self.keys, self.valid, start, self.scaling)

    @cached_property
    def window_queries(self) -> torch.Tensor:
        """Queries of the observation window: ``(B, Hq, W, D)``; a ``ValueError`` when ``W = 0``."""
        if self.window == 0:
            raise ValueError(
                f"the observation window of layer {self.layer_idx} is empty (Recipe.window=0), so it has no queries; a "
                "scorer that reads them needs window >= 1 (and should declare needs_window = True)."
            )
        return self.queries(self.seq_len - self.window, self.seq_len)
