"""The eviction pipeline: score -> forced -> allocate/split -> select -> rerotate -> build the layer.

Every engine mode (:mod:`kvpress_lab.engine.modes`) compresses a layer through these functions,
over a small explicit :class:`EvictionContext`: the recipe's three strategies and the options
the pipeline reads, never the recipe itself.

* :func:`score` — the scorer's ``(B, Hkv, T)`` scores of a :class:`~kvpress_lab.LayerView`,
  checked (shape, finite), with the entries forced whatever their score (:func:`forced_entries`:
  the observation window, the scorer's ``forced_keep``) and a two-stage scorer's stage-one scores;
* :func:`evict` — the per-head counts (the plan's, AdaKV's split, or the layer's count for every
  head), two-stage and safeguard entries, the executor's selection, then :func:`build_layer`;
* :func:`build_layer` — re-rotation of the kept keys (``Recipe.rerotate_keys``), the executor's
  layer, checked against the layer protocol, in place of the cache's layer.

Shape legend: :mod:`kvpress_lab.layer_view`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kvpress_lab.budgets import check_forced_fit
from kvpress_lab.cache_layers import check_layer
from kvpress_lab.capabilities import EXECUTOR, SCORER
from kvpress_lab.engine.decoding import mark_compressed
from kvpress_lab.engine.per_head_chunks import select_per_head
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.engine.rerotation import rerotate_kept_keys
from kvpress_lab.engine.role_timers import RoleTimers
from kvpress_lab.errors import UnsupportedCacheError
from kvpress_lab.head_allocation import adaptive_head_budgets, safeguard_entries
from kvpress_lab.layer_view import LayerView
from kvpress_lab.protocols import Allocator, Executor, Scorer, Selection
from kvpress_lab.ranking import first_stage_entries

__all__ = ["EvictionContext", "Scores", "ScoredLayer", "score", "forced_entries", "evict", "build_layer", "kept_scores"]

_UNTIMED = contextlib.nullcontext()  # what EvictionContext.timed returns when role timing is off


@dataclass(frozen=True)
class EvictionContext:
    """What the pipeline needs: the strategies, the options it reads, where it reports.

    Parameters
    ----------
    allocator, scorer, executor
        The recipe's strategy instances.
    window : int
        ``W``, the observation window (always kept).
    head_allocation : {"uniform", "adaptive"}
        How a layer's count is split across its KV heads (AdaKV for ``"adaptive"``).
    head_floor, head_floor_rule
        AdaKV's safeguard (:func:`~kvpress_lab.head_allocation.adaptive_head_budgets`).
    rerotate_keys : bool
        Re-rotate the kept keys to contiguous positions (:mod:`kvpress_lab.engine.rerotation`).
    timers : RoleTimers or None
        Where the time of each role goes; ``None``: untimed.
    selections : dict or None
        Layer index -> its last :class:`~kvpress_lab.protocols.Selection`, filled when given.
    """

    allocator: Allocator
    scorer: Scorer
    executor: Executor
    window: int
    head_allocation: str = "uniform"
    head_floor: float = 0.2
    head_floor_rule: str = "free"
    rerotate_keys: bool = False
    timers: RoleTimers | None = None
    selections: dict[int, Selection] | None = None

    @classmethod
    def from_recipe(cls, recipe: EngineRecipe, timers: RoleTimers | None = None,
                    selections: dict[int, Selection] | None = None) -> EvictionContext:
        """The context of ``recipe``'s strategies and options."""
        allocator, scorer, executor = recipe.strategies
        return cls(allocator, scorer, executor, recipe.window, recipe.head_allocation, recipe.head_floor,
                   recipe.head_floor_rule, recipe.rerotate_keys, timers, selections)

    def timed(self, role: str) -> Any:
        """``timers.time(role)`` (a context manager), or a shared no-op context when timing is off."""
        return _UNTIMED if self.timers is None else self.timers.time(role)

    @property
    def stores_every_layer(self) -> bool:
        """The executor rebuilds layers that lose nothing (quantized storage): every layer is built."""
        return bool(EXECUTOR.of(self.executor, "stores_every_layer"))


@dataclass(frozen=True)
class Scores:
    """A scored view: ``scores`` ``(B, Hkv, T)`` float32, ``forced`` ``(B, Hkv, T)`` bool, and a two-stage
    scorer's stage-one scores ``first`` ``(B, Hkv, T)`` (``None`` otherwise)."""

    scores: torch.Tensor
    forced: torch.Tensor
    first: torch.Tensor | None = None


@dataclass
class ScoredLayer:
    """A layer's entries, ready to evict.

    Parameters
    ----------
    idx : int
        Layer index in the model.
    cache : transformers.Cache
        The cache whose layer ``idx`` is replaced.
    keys, values : torch.Tensor
        ``(B, Hkv, T, D)``: what the scores index.
    valid : torch.Tensor
        ``(B, T)`` bool (``(B, Hkv, T)`` for a per-head layer's held entries), ``False`` on padding.
    scored : Scores or None
        The scores (``None`` until known: a scorer scored after the prefill).
    rotary : tuple of torch.Tensor or None
        The prefill's ``(cos, sin)``, for ``rerotate_keys``.
    tokens : torch.Tensor or None
        ``(B, T)`` ids the entries came from, recorded on the cache (:func:`~kvpress_lab.engine.decoding.mark_compressed`).
    """

    idx: int
    cache: Any
    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    scored: Scores | None = None
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    tokens: torch.Tensor | None = None


def score(context: EvictionContext, view: LayerView, kept_window: int | None = None,
          compute: Callable[[LayerView], torch.Tensor] | None = None) -> Scores:
    """Score ``view`` (``compute(view)`` instead of the scorer's ``score``, for accumulated chunk scores).

    ``kept_window``: the window actually held (a chunk may hold fewer queries than ``W``).

    Raises
    ------
    ValueError
        Scores of the wrong shape, or non-finite scores on real tokens, naming the scorer.
    """
    scorer = context.scorer
    staged = SCORER.of(scorer, "staged_scores")  # two-stage scorers (CriticalKV): kvpress_lab.ranking
    first = None
    if compute is not None:
        scores = compute(view)
    elif staged is None:
        scores = scorer.score(view)
    else:
        first, scores = staged(view)
    expected = (view.batch_size, view.num_kv_heads, view.seq_len)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"Scorer {scorer.name!r} returned scores of shape {got}, expected (B, Hkv, T)={expected}.")
    bad = ~torch.isfinite(scores) & view.valid[:, None, :]  # padding may score anything: it is never kept
    if bool(bad.any()):
        raise ValueError(
            f"Scorer {scorer.name!r} returned {int(bad.sum())} non-finite scores (NaN or inf) at layer {view.layer_idx}; "
            "scores must be finite (float16 overflow? compute scores in float32)."
        )
    return Scores(scores, forced_entries(context, view, kept_window), first)


def forced_entries(context: EvictionContext, view: LayerView, kept_window: int | None = None) -> torch.Tensor:
    """``(B, Hkv, T)`` bool: the observation window and the scorer's forced entries (sinks)."""
    positions = torch.arange(view.seq_len, device=view.device)
    window = view.window if kept_window is None else kept_window
    forced = (positions >= view.seq_len - window).expand(view.batch_size, view.num_kv_heads, -1)
    extra = SCORER.of(context.scorer, "forced_keep")
    extra = extra(view) if extra is not None else None
    return forced if extra is None else forced | extra


def evict(context: EvictionContext, layer: ScoredLayer, layer_keep: torch.Tensor,
          head_keep: torch.Tensor | None = None) -> Selection:
    """Keep ``layer_keep`` ``(B,)`` entries per head of ``layer`` (or ``head_keep`` ``(B, Hkv)``, a per-head
    allocator's), by the executor's selection; the layer is rebuilt in its cache."""
    scored = layer.scored
    per_head = layer.valid.dim() == 3  # (B, Hkv, T): a ragged layer's held entries (chunked prefill)
    with context.timed("allocate"):
        forced = scored.forced & (layer.valid if per_head else layer.valid[:, None, :])
        check_forced_fit(forced.sum(dim=-1), layer_keep[:, None] if head_keep is None else head_keep)
        keep, forced = _head_counts(context, layer, layer_keep, head_keep, forced)
        if scored.first is not None:  # two-stage selection: stage one's winners are kept, the executor fills the rest
            forced = first_stage_entries(scored.first, keep, forced, layer.valid,
                                         SCORER.of(context.scorer, "first_stage_ratio"))
    with context.timed("select"):
        if per_head:
            selection = select_per_head(context.executor, scored.scores, keep, forced, layer.valid)
        else:
            selection = context.executor.select(scored.scores, keep, forced, layer.valid)
    return build_layer(context, layer, selection)


def _head_counts(context: EvictionContext, layer: ScoredLayer, layer_keep: torch.Tensor, head_keep: torch.Tensor | None,
                 forced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, Hkv)`` entries each head keeps, and the forced entries (AdaKV's safeguard may add some)."""
    if head_keep is not None:  # a per-head allocator decided every head's count
        return head_keep, forced
    scored = layer.scored
    if context.head_allocation == "adaptive":
        base = scored.first is not None and SCORER.of(context.scorer, "split_heads_on") == "base"
        split_on = scored.first if base else scored.scores
        keep = adaptive_head_budgets(split_on, layer_keep, forced, layer.valid, context.head_floor, context.head_floor_rule)
        if base and context.head_floor_rule == "kvpress":  # kvpress keeps the safeguard outright
            forced = forced | safeguard_entries(split_on, layer_keep, forced, layer.valid, context.head_floor)
        return keep, forced
    keep = layer_keep[:, None].expand(-1, scored.scores.shape[1]).contiguous()  # (B, Hkv)
    if layer.valid.dim() == 3:
        keep = torch.minimum(keep, layer.valid.sum(dim=-1).cpu())
    return keep, forced


def build_layer(context: EvictionContext, layer: ScoredLayer, selection: Selection) -> Selection:
    """Replace layer ``layer.idx`` of its cache by the executor's layer of ``selection``; returns ``selection``."""
    keys = layer.keys
    if context.rerotate_keys:  # kept keys to contiguous positions (kvpress_lab.engine.rerotation)
        if layer.rotary is None:
            raise UnsupportedCacheError(
                "Recipe.rerotate_keys re-rotates the keys of a one-pass prefill only; this layer is re-compressed from "
                "held entries (chunked prefill or decoding-time compression), or its model passes no rotary tables."
            )
        keys = rerotate_kept_keys(keys, selection, layer.rotary)
    with context.timed("gather"):
        built = context.executor.build_layer(keys, layer.values, selection, layer.cache.layers[layer.idx].get_seq_length())
        check_layer(built, context.executor.name)
    layer.cache.layers[layer.idx] = built
    mark_compressed(layer.cache, layer.tokens)
    if context.selections is not None:
        context.selections[layer.idx] = selection
    return selection


def kept_scores(scores: torch.Tensor, selection: Selection) -> torch.Tensor:
    """``(B, Hkv, K)`` scores of the kept entries, in the kept layer's slot order (0 on filler slots)."""
    return scores.gather(-1, selection.indices.to(scores.device)).masked_fill(~selection.valid.to(scores.device), 0.0)
