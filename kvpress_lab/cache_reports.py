"""What a KV cache holds, layer by layer, and how it compares with the uncompressed cache.

:func:`cache_report` reads a transformers ``Cache`` (the one ``model.generate`` or
:meth:`Recipe.prefill <kvpress_lab.Recipe.prefill>` returns, compressed or not) and returns a
:class:`CacheReport`. Nothing is re-run: the uncompressed size is *computed* from each layer's
shapes and logical length.

* A compressed layer (any layer following
  :class:`~kvpress_lab.cache_layers.protocol.CompressedCacheLayer`, built-in or third-party) reports its
  ``kept_counts()``, ``physical_length``, ``get_seq_length()`` (logical length) and ``nbytes()``.
* An uncompressed full-attention layer (transformers' ``DynamicLayer``) holds every slot it was
  given, padding included (a cache does not know which slots are padding), so its kept count per
  row and head is its physical length. A static layer (``StaticCache``) preallocates its slots:
  its kept count is the entries filled so far, its bytes what it allocated (so its ratio may
  exceed 100%).
* A sliding-window layer (``DynamicSlidingWindowLayer``, e.g. Gemma3's local layers) is never
  compressed; the uncompressed cache holds exactly what it holds, so it counts as its own
  reference.

For a full-attention layer the reference is ``logical_length x Hkv x D x 2 (keys and values) x
element size x B``: what an uncompressed ``DynamicLayer`` of the same shape holds after the same
tokens. A compressed layer may hold a little more than its entries (slot masks, segment lengths),
so a budget at least as long as the prompt gives a ratio slightly above 1. Anything in
``cache.layers`` that is not a cache layer is a ``TypeError`` naming its index.

Examples
--------
>>> report = cache_report(cache)                         # doctest: +SKIP
>>> print(report.summary())                              # doctest: +SKIP
KV cache: 1.6 MiB of 7.5 MiB uncompressed (21.3%), 30 layers (30 compressed), 2 rows
>>> print(report.table())                                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CacheReport", "LayerReport", "cache_report"]

#: ``LayerReport.attention`` values.
FULL, SLIDING = "full", "sliding"


@dataclass(frozen=True)
class LayerReport:
    """One layer of a :class:`CacheReport`.

    Attributes
    ----------
    index : int
        Position of the layer in ``cache.layers``.
    kind : str
        Class name of the layer: a compressed layer's class (``CompressedLayer``, ``RaggedLayer``,
        a plugin's), or ``DynamicLayer`` / ``DynamicSlidingWindowLayer`` when uncompressed.
    attention : str
        ``"full"`` or ``"sliding"`` (sliding-window layers are never compressed).
    compressed : bool
        Whether the layer is a compressed one (it provides ``kept_counts``).
    batch_size, num_kv_heads, head_dim : int
        ``B``, ``Hkv`` and ``D`` of the held entries (0 for a layer that holds nothing yet).
    dtype : str
        Element dtype of the keys (``"float32"``, ...), ``""`` for an empty layer.
    kept : tuple of tuple of int
        ``(B, Hkv)`` entries held per row and KV head (filler slots of compressed layers excluded).
    logical_length : int
        Tokens the layer has seen (``get_seq_length()``).
    physical_length : int
        Entries held per KV head, filler slots included (the width attention reads).
    nbytes : int
        Bytes held (keys, values and any metadata the layer keeps).
    uncompressed_nbytes : int
        Bytes the uncompressed layer would hold: ``logical_length x Hkv x D x 2 x element size x B``
        for full-attention layers, ``nbytes`` for sliding-window layers.
    """

    index: int
    kind: str
    attention: str
    compressed: bool
    batch_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    kept: tuple[tuple[int, ...], ...]
    logical_length: int
    physical_length: int
    nbytes: int
    uncompressed_nbytes: int

    @property
    def kept_sum(self) -> int:
        """Entries held over all rows and KV heads."""
        return sum(sum(row) for row in self.kept)

    @property
    def kept_min(self) -> int:
        """Fewest entries held by one ``(row, head)`` (0 for an empty layer)."""
        return min((min(row) for row in self.kept if row), default=0)

    @property
    def kept_max(self) -> int:
        """Most entries held by one ``(row, head)`` (0 for an empty layer)."""
        return max((max(row) for row in self.kept if row), default=0)

    @property
    def ratio(self) -> float:
        """``nbytes / uncompressed_nbytes`` (1.0 for a layer that holds nothing)."""
        return self.nbytes / self.uncompressed_nbytes if self.uncompressed_nbytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field (``kept`` as nested lists) plus ``kept_sum/min/max`` and ``ratio``."""
        row = asdict(self)
        row["kept"] = [list(r) for r in self.kept]
        row.update(kept_sum=self.kept_sum, kept_min=self.kept_min, kept_max=self.kept_max, ratio=self.ratio)
        return row


@dataclass(frozen=True)
class CacheReport:
    """What a cache holds, per layer, against the uncompressed cache (see :func:`cache_report`).

    Attributes
    ----------
    layers : tuple of LayerReport
        One row per layer of the cache, in order.
    """

    layers: tuple[LayerReport, ...]

    @property
    def total_bytes(self) -> int:
        """Bytes held by every layer."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def uncompressed_bytes(self) -> int:
        """Bytes the uncompressed cache would hold after the same tokens."""
        return sum(layer.uncompressed_nbytes for layer in self.layers)

    @property
    def ratio(self) -> float:
        """``total_bytes / uncompressed_bytes`` (1.0 for an uncompressed or empty cache)."""
        return self.total_bytes / self.uncompressed_bytes if self.uncompressed_bytes else 1.0

    @property
    def num_compressed(self) -> int:
        """Layers that are compressed."""
        return sum(layer.compressed for layer in self.layers)

    @property
    def batch_size(self) -> int:
        """``B`` (the largest over layers; 0 for an empty cache)."""
        return max((layer.batch_size for layer in self.layers), default=0)

    @property
    def num_preallocated(self) -> int:
        """Uncompressed layers holding more slots than tokens (a ``StaticCache``'s preallocation)."""
        return sum(not layer.compressed and layer.physical_length > layer.logical_length for layer in self.layers)

    def summary(self) -> str:
        """One line: bytes held, uncompressed bytes, ratio, layers compressed (and preallocated), rows."""
        preallocated = f", {self.num_preallocated} preallocated" if self.num_preallocated else ""
        return (f"KV cache: {human_bytes(self.total_bytes)} of {human_bytes(self.uncompressed_bytes)} uncompressed "
                f"({100 * self.ratio:.1f}%), {len(self.layers)} layers ({self.num_compressed} compressed{preallocated}), "
                f"{self.batch_size} row{'' if self.batch_size == 1 else 's'}")

    def table(self) -> str:
        """Plain-text table, one line per layer, then a total line."""
        header = ("LAYER", "KIND", "ATTN", "KEPT SUM", "KEPT MIN", "KEPT MAX", "LOGICAL", "PHYSICAL", "BYTES",
                  "UNCOMPRESSED", "RATIO")
        rows = [header] + [
            (str(layer.index), layer.kind, layer.attention, str(layer.kept_sum), str(layer.kept_min),
             str(layer.kept_max), str(layer.logical_length), str(layer.physical_length), human_bytes(layer.nbytes),
             human_bytes(layer.uncompressed_nbytes), f"{100 * layer.ratio:.1f}%")
            for layer in self.layers
        ]
        rows.append(("total", "", "", str(sum(layer.kept_sum for layer in self.layers)), "", "", "", "",
                     human_bytes(self.total_bytes), human_bytes(self.uncompressed_bytes), f"{100 * self.ratio:.1f}%"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        left = {1, 2}  # text columns; numbers are right-aligned
        lines = ["  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        return "\n".join(line.rstrip() for line in lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, ratio and one dict per layer (:meth:`LayerReport.to_dict`)."""
        return {
            "total_bytes": self.total_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "ratio": self.ratio,
            "num_layers": len(self.layers),
            "num_compressed": self.num_compressed,
            "batch_size": self.batch_size,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def __str__(self) -> str:
        return self.table()


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def cache_report(cache: Any) -> CacheReport:
    """Report what ``cache`` holds per layer and its ratio to the uncompressed cache.

    Parameters
    ----------
    cache : transformers.Cache
        A cache with ``.layers`` (``DynamicCache`` from ``generate`` or a forward pass, or the cache
        :meth:`Recipe.prefill <kvpress_lab.Recipe.prefill>` returns), compressed or not.

    Returns
    -------
    CacheReport
        A frozen dataclass; ``report.ratio`` is 1.0 for an uncompressed cache.

    Raises
    ------
    TypeError
        If ``cache`` has no ``layers`` (a legacy tuple of tensors, ``None``).
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"cache_report expects a transformers Cache with .layers, got {type(cache).__name__}.")
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)):
        raise TypeError(f"cache_report expects cache.layers to be a list of cache layers, got {type(layers).__name__}.")
    for index, layer in enumerate(layers):
        if not (hasattr(layer, "keys") and hasattr(layer, "get_seq_length")) and not callable(getattr(layer, "kept_counts", None)):
            raise TypeError(f"cache_report: layer {index} of this {type(cache).__name__} is a {type(layer).__name__}, not a "
                            "cache layer (a transformers CacheLayerMixin with keys, values and get_seq_length(), or a "
                            "kvpress_lab compressed layer).")
    return CacheReport(tuple(_layer_report(index, layer) for index, layer in enumerate(layers)))


def _layer_report(index: int, layer: Any) -> LayerReport:
    kind = type(layer).__name__
    sliding = bool(getattr(layer, "is_sliding", False))
    attention = SLIDING if sliding else FULL
    compressed = callable(getattr(layer, "kept_counts", None))
    keys = getattr(layer, "keys", None)
    values = getattr(layer, "values", None)
    initialised = getattr(layer, "is_initialized", keys is not None) and keys is not None and keys.numel() > 0
    if not initialised:
        return LayerReport(index, kind, attention, compressed, 0, 0, 0, "", (), 0, 0, 0, 0)
    head_dim = int(keys.shape[-1])
    element = int(keys.element_size())
    dtype = str(keys.dtype).removeprefix("torch.")
    logical = int(layer.get_seq_length())
    if compressed:
        counts = layer.kept_counts()  # (B, Hkv) int64
        batch, heads = (int(n) for n in counts.shape)
        kept = tuple(tuple(int(n) for n in row) for row in counts.tolist())
        physical = int(layer.physical_length)
        held = int(layer.nbytes())
    else:  # a transformers layer: keys and values (B, Hkv, P, D); a static layer preallocates P slots, fills `logical`
        batch, heads, physical = (int(n) for n in keys.shape[:3])
        kept = tuple((min(physical, logical),) * heads for _ in range(batch))
        held = sum(int(t.numel()) * int(t.element_size()) for t in (keys, values) if t is not None)
    if sliding:
        reference = held  # never compressed: the uncompressed cache holds exactly this layer
    else:
        reference = logical * heads * head_dim * 2 * element * batch
    return LayerReport(index, kind, attention, compressed, batch, heads, head_dim, dtype, kept, logical, physical,
                       held, reference)
