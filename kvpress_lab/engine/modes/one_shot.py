"""One-shot prefill: each full-attention layer is compressed right after its prefill forward.

The budget plan is made at the forward's first layer (it depends only on the prompt's lengths,
for a ``"static"`` allocator); each layer is then scored, allocated, selected and gathered
(:func:`~kvpress_lab.engine.eviction.evict`) before the next layer runs, so no more than one
layer is held uncompressed beyond its budget at a time.
"""

from __future__ import annotations

from typing import ClassVar

from kvpress_lab.engine.eviction import ScoredLayer, evict, score
from kvpress_lab.engine.layer_call import ForwardInputs, LayerCall
from kvpress_lab.engine.modes.base import EngineMode, ModeContext
from kvpress_lab.engine.planning import BudgetPlan
from kvpress_lab.engine.post_prefill import needs_reconstruction
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.protocols import Selection

__all__ = ["OneShotPrefill"]


class OneShotPrefill(EngineMode):
    """Compress every prefill of an empty cache layer by layer, with a ``"static"`` allocator's plan."""

    name: ClassVar[str] = "one_shot"

    def __init__(self, context: ModeContext):
        super().__init__(context)
        self.plan: BudgetPlan | None = None  # this forward's, once its first layer ran

    @classmethod
    def applies(cls, recipe: EngineRecipe) -> bool:
        return (recipe.compress_prefill and recipe.block_size is None and recipe.strategies.allocator.scope == "static"
                and not needs_reconstruction(recipe.strategies.scorer))

    def begin_forward(self, forward: ForwardInputs) -> None:
        self.plan = None  # budgets depend on this forward's prompt: planned at its first layer

    def compress(self, call: LayerCall) -> bool:
        if not call.is_prefill:
            return False
        context = self.context
        valid = call.prefill_valid()
        if self.plan is None:
            self.plan = context.record.plan = context.plan(valid)
        ordinal = context.ordinal(call.idx)
        if not self.plan.evicts(ordinal) and not context.eviction.stores_every_layer:
            return True
        layer = call.layer
        target = ScoredLayer(call.idx, call.cache, layer.keys, layer.values, valid, tokens=call.forward.input_ids,
                             rotary=call.position_embeddings if context.recipe.rerotate_keys else None)
        self.evict_layer(call, target, ordinal)
        return True

    def evict_layer(self, call: LayerCall, target: ScoredLayer, ordinal: int) -> Selection:
        """Score the prefilled layer and evict it to the plan's counts."""
        eviction = self.context.eviction
        with eviction.timed("score"):
            target.scored = score(eviction, call.prefill_view(self.context.adapter, target.valid, eviction.window))
        head_keep = None if self.plan.head_keep is None else self.plan.head_keep[:, ordinal]
        return evict(eviction, target, self.plan.keep[:, ordinal], head_keep)
