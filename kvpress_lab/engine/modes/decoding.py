"""Decoding-time compression (``Recipe.decode_budget``): layers cut back to a budget while generating.

Every layer keeps the attention inputs of its latest ``W`` tokens (:class:`~kvpress_lab.engine.recent_inputs.RecentInputs`,
reset by each prefill); once a row holds ``decode_budget + compress_every`` entries (or, with
``decode_schedule="every"``, every ``compress_every`` decoding forwards: kvpress's
``DecodingPress``) the layer is re-compressed down to the allocator's decoding budgets, scored
with those latest queries (:func:`~kvpress_lab.engine.recompression.recompress`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers.cache_utils import DynamicLayer

from kvpress_lab.engine.eviction import ScoredLayer
from kvpress_lab.engine.layer_call import ForwardInputs, LayerCall
from kvpress_lab.engine.modes.base import EngineMode, ModeContext
from kvpress_lab.engine.planning import BudgetPlan
from kvpress_lab.engine.recent_inputs import RecentInputs
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.engine.recompression import LatestInputs, held_entries, recompress

__all__ = ["DecodingCompression"]


class DecodingCompression(EngineMode):
    """Per layer: the latest inputs and the decoding forwards since the last cut; per forward: the decoding plan."""

    name: ClassVar[str] = "decoding"

    def __init__(self, context: ModeContext):
        super().__init__(context)
        compressible = context.adapter.compressible
        self.recent = {idx: RecentInputs(context.recipe.window) for idx in compressible}
        self.steps = dict.fromkeys(compressible, 0)  # decoding forwards since the last cut ("every")
        self.plan: BudgetPlan | None = None

    @classmethod
    def applies(cls, recipe: EngineRecipe) -> bool:
        return recipe.decode_budget is not None

    def begin_forward(self, forward: ForwardInputs) -> None:
        self.plan = None  # once per forward: budgets for the tokens seen so far

    def compress(self, call: LayerCall) -> bool:
        if call.layer is None:
            return True  # nothing cached at this layer
        if call.is_prefill:  # a new prompt: scoring starts again from its inputs; the prefill modes compress it
            self.recent[call.idx].reset()
            self.steps[call.idx] = 0
            self.recent[call.idx].add(call.hidden, call.position_embeddings)
            return False
        self._cut(call)
        return True

    def _cut(self, call: LayerCall) -> None:
        """Cut layer ``idx`` back to its decoding budget once a row holds ``compress_every`` entries more."""
        recipe, idx = self.context.recipe, call.idx
        recent = self.recent[idx]
        recent.add(call.hidden, call.position_embeddings)
        slack = recipe.compress_every
        if recipe.decode_schedule == "every":  # kvpress's DecodingPress: a cut every N decoding forwards
            self.steps[idx] += 1
            if self.steps[idx] < recipe.compress_every:
                return
            self.steps[idx], slack = 0, 0
        layer, padding = call.layer, call.forward.padding
        held = layer.keys.shape[2] if type(layer) is DynamicLayer else 0
        all_valid = (padding[:, -held:] if padding is not None and padding.shape[-1] >= held
                     else torch.ones(call.hidden.shape[0], held, dtype=torch.bool, device=call.hidden.device))
        keys, values, valid = held_entries(layer, all_valid, "Decoding-time compression")
        if self.plan is None:
            lengths = ([layer.get_seq_length()] * call.hidden.shape[0] if padding is None
                       else [int(n) for n in padding.sum(dim=-1).tolist()])
            self.plan = self.context.plan(valid, spec=recipe.decode_spec, lengths=lengths)
        keep = torch.minimum(self.plan.keep[:, self.context.ordinal(idx)], valid.sum(dim=-1).cpu())
        target = ScoredLayer(idx, call.cache, keys, values, valid, tokens=call.forward.input_ids)
        recompress(self.context.eviction, self.context.adapter, target, keep,
                   LatestInputs(recent.hidden, (recent.cos, recent.sin)), slack=slack)
