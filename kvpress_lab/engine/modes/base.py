"""What an engine mode is: a class with its own state that the session asks to compress a layer call.

A :class:`~kvpress_lab.engine.session.CompressionSession` owns the hooks and the thread scope;
when a forward begins, each layer's forward ends and the forward ends, it hands the
:class:`~kvpress_lab.engine.layer_call.ForwardInputs` / :class:`~kvpress_lab.engine.layer_call.LayerCall`
to the modes of its recipe, in registration order (:mod:`kvpress_lab.engine.modes`). A mode
compresses through the eviction pipeline (:mod:`kvpress_lab.engine.eviction`) over the
session's :class:`ModeContext`, and reports through its :class:`SessionRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from kvpress_lab.budgets import BudgetSpec
from kvpress_lab.engine.eviction import EvictionContext
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.generate_guard import GenerateCall
from kvpress_lab.engine.layer_call import ForwardInputs, LayerCall
from kvpress_lab.engine.planning import BudgetPlan, plan_budgets
from kvpress_lab.engine.recipe_contract import EngineRecipe
from kvpress_lab.protocols import Selection

__all__ = ["EngineMode", "ModeContext", "SessionRecord"]


@dataclass
class SessionRecord:
    """What a session's modes report (read through the session's attributes of the same names).

    Parameters
    ----------
    selections : dict[int, Selection]
        Layer index -> its last selection (filled when the session records indices).
    plan : BudgetPlan or None
        The last prefill's budget plan.
    accumulated_scores : dict[int, torch.Tensor]
        Layer index -> ``(B, Hkv, held)`` running scores of a chunked prefill with an accumulating scorer.
    """

    selections: dict[int, Selection] = field(default_factory=dict)
    plan: BudgetPlan | None = None
    accumulated_scores: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ModeContext:
    """What every mode of one session shares: the model, the recipe, the pipeline's context, the record."""

    model: nn.Module
    adapter: ModelAdapter
    recipe: EngineRecipe
    eviction: EvictionContext
    record: SessionRecord

    def ordinal(self, idx: int) -> int:
        """Position of layer ``idx`` among the compressible layers (the plan's column)."""
        return self.adapter.compressible.index(idx)

    def plan(self, valid: torch.Tensor, statistics: torch.Tensor | None = None, spec: BudgetSpec | None = None,
             lengths: list[int] | None = None) -> BudgetPlan:
        """The allocator's plan for rows of ``valid`` ``(B, T)`` real tokens (or ``lengths``), timed as ``allocate``."""
        with self.eviction.timed("allocate"):
            real = [int(n) for n in valid.sum(dim=-1).tolist()] if lengths is None else lengths
            return plan_budgets(self.eviction.allocator, spec or self.recipe.budget_spec, real,
                                len(self.adapter.compressible), self.adapter.num_kv_heads, statistics)


class EngineMode:
    """One way of compressing: its state, and what it does at each step of a forward (defaults: nothing).

    A mode is registered once (:func:`kvpress_lab.engine.modes.register_mode`); a session runs it
    when :meth:`applies` to its recipe. For each layer call the session asks its modes in
    registration order and stops at the first whose :meth:`compress` returns ``True``.
    """

    name: ClassVar[str]

    def __init__(self, context: ModeContext):
        self.context = context

    @classmethod
    def applies(cls, recipe: EngineRecipe) -> bool:
        """Whether a session of ``recipe`` runs this mode."""
        return True

    def check_generate(self, call: GenerateCall) -> None:
        """Before ``model.generate`` runs in the session's thread (raise to refuse it)."""

    def begin_forward(self, forward: ForwardInputs) -> None:
        """Before the decoder's forward."""

    def compress(self, call: LayerCall) -> bool:
        """After a full-attention layer's forward: ``True`` when this mode handled the call."""
        return False

    def end_forward(self, forward: ForwardInputs) -> None:
        """After the decoder's forward."""

    def detach(self) -> None:
        """The session stops: drop what this mode holds."""
