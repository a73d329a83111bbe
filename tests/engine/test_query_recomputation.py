"""Window queries recomputed from the attention input reproduce the model's own attention rows."""

from __future__ import annotations

import torch

from kvpress_lab import Recipe
from helpers.engine_plugins import WINDOW_ATTENTION
from helpers.tiny_models import left_pad, random_prompt, tiny_model

W = 6


def test_window_attention_equals_eager_attention_weights(family, test_strategies):
    model = tiny_model(family, "eager")
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (27, 19)])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    WINDOW_ATTENTION.clear()
    with Recipe(scorer="test_recording", budget=W, window=W).apply(model):
        with torch.no_grad():
            out = model(ids, attention_mask=mask, position_ids=positions, output_attentions=True, use_cache=True)
    assert WINDOW_ATTENTION, "no layer was scored"
    for idx, ours in WINDOW_ATTENTION.items():
        theirs = out.attentions[idx][:, :, -W:, :].float()  # (B, Hq, W, T)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
