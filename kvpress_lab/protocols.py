"""The three roles of a compression method, as typed protocols.

A *recipe* composes one :class:`Allocator`, one :class:`Scorer` and one :class:`Executor`.
Plugins register implementations by name through the hooks in :mod:`kvpress_lab.hookspecs`;
implementations are small dataclasses whose fields are their hyperparameters.

Tensor contracts (shape legend in :mod:`kvpress_lab.layer_view`):

* every tensor a role returns lives on the device of the layer it serves (``view.device``);
  no role moves data to the host on the hot path;
* scores are ``float32`` and finite, shape ``(B, Hkv, T)``; higher means "keep";
* budgets count cache entries per KV head *including* the observation window
  (:mod:`kvpress_lab.budgets` owns what budgets mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

import torch

from kvpress_lab import capabilities
from kvpress_lab.budgets import BudgetRequest

if TYPE_CHECKING:
    from kvpress_lab.cache_layers import CompressedCacheLayer
    from kvpress_lab.layer_view import LayerView

__all__ = ["AllocatorScope", "BudgetRequest", "Selection", "Allocator", "Scorer", "Executor", "Strategies"]

AllocatorScope = Literal["static", "global"]


@dataclass(frozen=True)
class Selection:
    """Which entries of a layer survive eviction.

    Parameters
    ----------
    indices : torch.Tensor
        ``(B, Hkv, K)`` int64 token positions into the prefill cache (padded frame), ascending
        among valid slots. Filler slots (rows that keep fewer than ``K`` entries) come first.
    valid : torch.Tensor
        ``(B, Hkv, K)`` bool, ``False`` on filler slots.
    """

    indices: torch.Tensor
    valid: torch.Tensor

    @property
    def kept_counts(self) -> torch.Tensor:
        """``(B, Hkv)`` int64: number of kept entries per row and head."""
        return self.valid.sum(dim=-1)


@runtime_checkable
class Allocator(Protocol):
    """Decides how many entries each layer keeps.

    ``scope`` says when the engine can call it: ``"static"`` before eviction (budgets depend only
    on sizes), ``"global"`` after the last layer with every layer's statistics (eviction then waits
    until the end of the prefill forward pass). A global allocator also defines
    ``layer_statistic(view)`` or ``scores_statistic(scores, forced, valid)``, which the engine
    calls at every compressible layer and hands back, per row, as ``BudgetRequest.layer_statistics``.

    Splitting a layer's budget across its KV heads is not an allocator scope but the recipe's
    ``head_allocation`` axis (AdaKV), so it composes with every allocator.

    Optional capabilities (:data:`kvpress_lab.capabilities.ALLOCATOR`; any other ``ClassVar``
    is refused when the allocator is registered):

    {capabilities}
    """

    name: ClassVar[str]
    scope: ClassVar[AllocatorScope]

    def allocate(self, request: BudgetRequest) -> list[int]:
        """Return ``L`` per-layer budgets (entries per KV head, window included), each >= ``min(W, T)``."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Scores every cached entry of one layer: higher means more important.

    Optional capabilities (:data:`kvpress_lab.capabilities.SCORER`; any other ``ClassVar`` is
    refused when the scorer is registered):

    {capabilities}
    """

    name: ClassVar[str]

    def score(self, view: LayerView) -> torch.Tensor:
        """Return ``(B, Hkv, T)`` float32 finite scores on ``view.device``.

        Scores of padded positions are ignored; the observation window is always kept by the
        engine. What else a scorer may declare is listed on :class:`Scorer`.
        """
        ...


@runtime_checkable
class Executor(Protocol):
    """Turns scores and budgets into the physical compressed cache layer.

    The layer that :meth:`build_layer` returns follows
    :class:`~kvpress_lab.cache_layers.CompressedCacheLayer` and so owns its decoding (mask, or its
    own attention call).

    Optional capabilities (:data:`kvpress_lab.capabilities.EXECUTOR`; any other ``ClassVar`` is
    refused when the executor is registered):

    {capabilities}
    """

    name: ClassVar[str]

    def select(self, scores: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor, candidates: torch.Tensor) -> Selection:
        """Choose the kept entries.

        Parameters
        ----------
        scores : torch.Tensor
            ``(B, Hkv, T)`` float32.
        keep : torch.Tensor
            ``(B, Hkv)`` int64, entries to keep per row and head, ``<=`` the row's real tokens.
        forced : torch.Tensor
            ``(B, Hkv, T)`` bool, entries that must be kept (window, sinks); never more than ``keep``.
        candidates : torch.Tensor
            ``(B, T)`` bool, ``False`` on padding, which is never kept.
        """
        ...

    def build_layer(
        self, keys: torch.Tensor, values: torch.Tensor, selection: Selection, logical_length: int
    ) -> CompressedCacheLayer:
        """Gather the kept ``(B, Hkv, T, D)`` entries into a cache layer that remembers ``logical_length``."""
        ...


class Strategies(NamedTuple):
    """The strategy instances a recipe was built from."""

    allocator: Allocator
    scorer: Scorer
    executor: Executor


for _protocol, _table in ((Allocator, capabilities.ALLOCATOR), (Scorer, capabilities.SCORER),
                          (Executor, capabilities.EXECUTOR)):
    _protocol.__doc__ = _protocol.__doc__.replace("{capabilities}", _table.rst().replace("\n", "\n    "))
