"""The latest attention inputs kept for decoding-time compression hold W rows, never the whole prompt's."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_prompt, tiny_model
from kvpress_lab import Recipe
from kvpress_lab.engine.recent_inputs import RecentInputs


def _rotary(n: int):
    return torch.zeros(1, n, 2), torch.zeros(1, n, 2)


def test_a_long_input_is_not_pinned_by_the_window():
    recent = RecentInputs(window=4)
    prompt = torch.arange(100 * 8, dtype=torch.float32).view(1, 100, 8)
    recent.add(prompt, _rotary(100))
    assert recent.hidden.untyped_storage().nbytes() == 4 * 8 * 4  # its own storage: 4 rows of 8 floats
    assert torch.equal(recent.hidden, prompt[:, -4:])
    recent.add(torch.ones(1, 1, 8), _rotary(1))
    assert recent.hidden.untyped_storage().nbytes() == 4 * 8 * 4
    assert torch.equal(recent.hidden[:, -1], torch.ones(1, 8)) and torch.equal(recent.hidden[:, 0], prompt[:, -3].view(1, 8))


def test_a_session_keeps_inputs_only_for_decoding_time_compression():
    model = tiny_model("llama")
    ids = random_prompt(1, 60)
    with Recipe.preset("snapkv", budget=16, window=4).apply(model) as session, torch.no_grad():
        model(ids, use_cache=True)
        with pytest.raises(KeyError, match="no engine mode 'decoding'"):  # nothing keeps inputs without decode_budget
            session.mode("decoding")
    with Recipe.preset("snapkv", budget=16, window=4, decode_budget=24).apply(model) as session, torch.no_grad():
        model(ids, use_cache=True)
        held = [session.mode("decoding").recent[idx] for idx in session.adapter.compressible]
        assert [len(r) for r in held] == [4] * len(held)
        hidden_size = model.config.hidden_size
        assert all(r.hidden.untyped_storage().nbytes() == 4 * hidden_size * 4 for r in held)
