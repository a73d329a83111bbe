"""Deferred eviction: every layer scored during the prefill, evicted after its last layer.

For an allocator of scope ``"global"`` (its budgets come from a statistic of every layer:
:mod:`kvpress_lab.engine.global_statistics`) and for a scorer scored by a pass after the prefill
(``needs = "reconstruction"``, KVzip: :mod:`kvpress_lab.engine.post_prefill`). The full cache of
every layer is then held until the end of the prefill's forward: the peak memory of
uncompressed prefill, plus ``(B, Hkv, T)`` float32 scores per layer.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from kvpress_lab.engine.eviction import ScoredLayer, Scores, evict, forced_entries, score
from kvpress_lab.engine.global_statistics import layer_statistic, ranks_scores
from kvpress_lab.engine.layer_call import ForwardInputs, LayerCall
from kvpress_lab.engine.modes.base import EngineMode, ModeContext
from kvpress_lab.engine.post_prefill import needs_reconstruction, reconstruction_scores
from kvpress_lab.engine.recipe_contract import EngineRecipe

__all__ = ["DeferredEviction"]


class DeferredEviction(EngineMode):
    """Score (or hold) each prefilled layer; plan with every layer's statistics; evict them all at the end."""

    name: ClassVar[str] = "deferred"

    def __init__(self, context: ModeContext):
        super().__init__(context)
        self.reconstruct = needs_reconstruction(context.eviction.scorer)  # kvzip: scored by a pass after the prefill
        self.pending: list[ScoredLayer] = []
        self.statistics: list[torch.Tensor] = []
        self.forward: ForwardInputs | None = None

    @classmethod
    def applies(cls, recipe: EngineRecipe) -> bool:
        return recipe.compress_prefill and (recipe.strategies.allocator.scope == "global"
                                            or needs_reconstruction(recipe.strategies.scorer))

    def begin_forward(self, forward: ForwardInputs) -> None:
        self.pending.clear()
        self.statistics.clear()
        self.forward = forward

    def compress(self, call: LayerCall) -> bool:
        if not call.is_prefill:
            return False
        context = self.context.eviction
        valid = call.prefill_valid()
        layer = call.layer
        with context.timed("score"):
            view = call.prefill_view(self.context.adapter, valid, context.window)
            # a reconstruction scorer (kvzip) is scored after the prefill: end_forward
            scored = Scores(None, forced_entries(context, view)) if self.reconstruct else score(context, view)
        with context.timed("allocate"):
            statistic = layer_statistic(context.allocator, view, scored.scores, scored.forced, valid)
        if statistic is not None:
            self.statistics.append(statistic)
        self.pending.append(ScoredLayer(call.idx, call.cache, layer.keys, layer.values, valid, scored,
                                        rotary=call.position_embeddings if self.context.recipe.rerotate_keys else None,
                                        tokens=call.forward.input_ids))
        return True

    def end_forward(self, forward: ForwardInputs) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if self.reconstruct:
            self._score_by_reconstruction(pending)
        device = pending[0].scored.scores.device
        statistics = torch.stack([s.to(device) for s in self.statistics], dim=1) if self.statistics else None  # (B, L, ...)
        plan = self.context.record.plan = self.context.plan(pending[0].valid, statistics)
        for layer in pending:
            ordinal = self.context.ordinal(layer.idx)
            if plan.evicts(ordinal) or self.context.eviction.stores_every_layer:
                evict(self.context.eviction, layer, plan.keep[:, ordinal],
                      None if plan.head_keep is None else plan.head_keep[:, ordinal])

    def _score_by_reconstruction(self, pending: list[ScoredLayer]) -> None:
        """Fill the pending layers' scores by the scorer's reconstruction pass (:mod:`~kvpress_lab.engine.post_prefill`)."""
        context, forward = self.context, self.forward
        with context.eviction.timed("score"):
            scores = reconstruction_scores(context.model, context.adapter, context.eviction.scorer, pending[0].cache,
                                           forward.input_ids, pending[0].valid, forward.position_ids)
        allocator = context.eviction.allocator
        for layer in pending:
            layer.scored = Scores(scores[layer.idx], layer.scored.forced)
            if ranks_scores(allocator):
                self.statistics.append(layer_statistic(allocator, None, layer.scored.scores, layer.scored.forced, layer.valid))

    def detach(self) -> None:
        self.pending.clear()
