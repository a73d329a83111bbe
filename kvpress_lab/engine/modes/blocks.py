"""Block scoring inside a one-shot prefill (``Recipe(block_size=...)``, kvpress's ``BlockPress``).

A one-shot prefill whose layers are selected block by block
(:func:`~kvpress_lab.engine.block_scoring.select_in_blocks`) instead of by one scoring of the
whole prompt; planning and building are the one-shot mode's.
"""

from __future__ import annotations

from typing import ClassVar

from kvpress_lab.engine.block_scoring import select_in_blocks
from kvpress_lab.engine.eviction import ScoredLayer, build_layer
from kvpress_lab.engine.layer_call import LayerCall
from kvpress_lab.engine.modes.one_shot import OneShotPrefill
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.protocols import Selection

__all__ = ["BlockScoring"]


class BlockScoring(OneShotPrefill):
    """Each prefilled layer keeps the survivors of block-by-block rescoring."""

    name: ClassVar[str] = "blocks"

    @classmethod
    def applies(cls, recipe: EngineRecipe) -> bool:
        return recipe.compress_prefill and recipe.block_size is not None  # Recipe refuses every other combination

    def evict_layer(self, call: LayerCall, target: ScoredLayer, ordinal: int) -> Selection:
        eviction = self.context.eviction
        with eviction.timed("score"):
            view = call.prefill_view(self.context.adapter, target.valid, eviction.window)
            selection = select_in_blocks(eviction.scorer, view, self.plan.keep[:, ordinal],
                                         self.context.recipe.block_size, view.window)
        return build_layer(eviction, target, selection)
