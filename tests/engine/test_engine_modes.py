"""Engine modes: each a module of its own; a new one is a class and one registration line.

The toy mode below lives in this test file only: it is registered with one line, runs for the
recipes it says it applies to, compresses through the engine's own eviction pipeline, and is
unregistered afterwards. No engine file knows about it.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from kvpress_lab import Recipe
from kvpress_lab.engine.eviction import ScoredLayer, Scores, evict, forced_entries
from kvpress_lab.engine.layer_call import LayerCall
from kvpress_lab.engine.modes import ENGINE_MODES, EngineMode, register_mode, unregister_mode
from helpers.tiny_models import random_prompt, tiny_model


class KeepNewestHalf(EngineMode):
    """Toy mode: every prefilled layer keeps its newest half, whatever the scorer says."""

    name: ClassVar[str] = "toy_newest_half"

    @classmethod
    def applies(cls, recipe) -> bool:
        return recipe.preset_name == "toy-newest-half"

    def compress(self, call: LayerCall) -> bool:
        if not call.is_prefill:
            return False
        layer, valid = call.layer, call.prefill_valid()
        view = call.prefill_view(self.context.adapter, valid, self.context.eviction.window)
        recency = torch.arange(view.seq_len, dtype=torch.float32).expand(view.batch_size, view.num_kv_heads, -1)
        target = ScoredLayer(call.idx, call.cache, layer.keys, layer.values, valid,
                             Scores(recency, forced_entries(self.context.eviction, view)), tokens=call.forward.input_ids)
        evict(self.context.eviction, target, torch.full((view.batch_size,), view.seq_len // 2))
        return True


@pytest.fixture
def toy_mode():
    register_mode(KeepNewestHalf, before="one_shot")  # the one registration line
    try:
        yield KeepNewestHalf
    finally:
        unregister_mode(KeepNewestHalf.name)


def test_a_mode_added_in_a_test_runs_before_one_shot_and_uses_the_pipeline(toy_mode):
    model = tiny_model("llama", layers=2)
    ids = random_prompt(1, 40)
    toy = Recipe(allocator="uniform", scorer="snapkv_window", budget=36, preset_name="toy-newest-half")
    with toy.apply(model, record_indices=True) as session, torch.no_grad():
        cache = model(ids, use_cache=True).cache
    assert [mode.name for mode in session.modes] == ["chunked", "toy_newest_half", "one_shot"]
    for idx, selection in session.selections.items():
        assert selection.indices[0, 0].tolist() == list(range(20, 40)), idx  # the newest half, not the budget of 36
        assert cache.layers[idx].kept_counts().tolist() == [[20] * selection.indices.shape[1]]
    plain = Recipe(allocator="uniform", scorer="snapkv_window", budget=36)  # not the toy's recipe: one-shot, 36 kept
    with plain.apply(model, record_indices=True) as session, torch.no_grad():
        model(ids, use_cache=True)
    assert "toy_newest_half" not in [mode.name for mode in session.modes]
    assert all(s.indices.shape[-1] == 36 for s in session.selections.values())


def test_unregistering_restores_the_built_in_modes(toy_mode):
    assert KeepNewestHalf in ENGINE_MODES
    unregister_mode(KeepNewestHalf.name)
    assert [mode.name for mode in ENGINE_MODES] == ["chunked", "decoding", "deferred", "blocks", "one_shot"]
    register_mode(KeepNewestHalf)  # the fixture unregisters it again


def test_registration_refuses_a_duplicate_name_and_an_unknown_anchor():
    class Again(KeepNewestHalf):
        name: ClassVar[str] = "one_shot"

    with pytest.raises(ValueError, match="'one_shot' is registered already"):
        register_mode(Again)
    with pytest.raises(ValueError, match="before='nowhere' names no registered engine mode"):
        register_mode(KeepNewestHalf, before="nowhere")
    with pytest.raises(ValueError, match="No engine mode named 'nowhere'"):
        unregister_mode("nowhere")


@pytest.mark.parametrize(("recipe", "modes"), [
    (Recipe.preset("snapkv", budget=16), ["chunked", "one_shot"]),
    (Recipe.preset("snapkv", budget=16, decode_budget=24), ["chunked", "decoding", "one_shot"]),
    (Recipe.preset("snapkv", budget=16, decode_budget=24, compress_prefill=False), ["chunked", "decoding"]),
    (Recipe(allocator="adaptive", budget=16), ["chunked", "deferred"]),
    (Recipe.preset("kvzip", budget=16), ["chunked", "deferred"]),
    (Recipe(scorer="keydiff", block_size=8, budget=16), ["chunked", "blocks"]),
])
def test_each_recipe_runs_the_modes_it_needs(recipe, modes):
    with recipe.apply(tiny_model("llama", layers=2)) as session:
        assert [mode.name for mode in session.modes] == modes


def test_the_padding_mask_is_read_once_per_forward(monkeypatch):
    """The model's hooks read the decoder's 2-D mask once; the session takes it from them, never reads it again."""
    from kvpress_lab.engine.decoding import PaddingCapture
    from helpers.tiny_models import left_pad

    reads = []
    original = PaddingCapture.__call__
    monkeypatch.setattr(PaddingCapture, "__call__", lambda self, args, kwargs: reads.append(1) or original(self, args, kwargs))
    model = tiny_model("llama", layers=2)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (40, 31)])
    with Recipe.preset("snapkv", budget=16).apply(model, record_indices=True) as session, torch.no_grad():
        model(ids, attention_mask=mask, use_cache=True)
    assert len(reads) == 1
    for selection in session.selections.values():  # the mask the hooks read reached the pipeline: padding is never kept
        assert int(selection.indices[1][selection.valid[1]].min()) >= 9
