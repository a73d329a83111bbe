"""Budget >= prompt length: generation must equal uncompressed generation exactly."""

from __future__ import annotations

import pytest
import torch

from kvpress_lab import Recipe
from kvpress_lab.cache_layers.dense import CompressedLayer
from kvpress_lab.engine.decoding import COMPRESSED_FLAG
from kvpress_lab.engine.model_hooks import disable_compressed_decoding, enable_compressed_decoding
from kvpress_lab.engine.prefill import padded_positions
from helpers.tiny_models import left_pad, random_prompt, tiny_model


def _generate(model, ids, mask=None, **kwargs):
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=False, output_scores=True,
        return_dict_in_generate=True, pad_token_id=0, **kwargs,
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 3])
def test_budget_at_least_prompt_is_identity(family, attn, batch):
    model = tiny_model(family, attn)
    if batch == 1:
        ids, mask = random_prompt(1, 29), None
    else:
        ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (29, 17, 23)])
    base = _generate(model, ids, mask)
    for budget in (ids.shape[1], 2 * ids.shape[1]):
        with Recipe(budget=budget).apply(model):
            out = _generate(model, ids, mask)
        assert torch.equal(out.sequences, base.sequences)
        for got, want in zip(out.scores, base.scores):
            assert torch.equal(got, want)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_compressed_layers_holding_everything_decode_like_dynamic_layers(family, attn):
    """The engine's own decoding path (CompressedLayer + per-layer masks) with nothing evicted."""
    model = tiny_model(family, attn)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (21, 13, 18)])
    base = _generate(model, ids, mask)

    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=padded_positions(mask), use_cache=True)
    cache = out.cache
    for idx, layer in enumerate(cache.layers):
        if type(layer).__name__ == "DynamicLayer":
            cache.layers[idx] = CompressedLayer(layer.keys, layer.values, mask.bool(), ids.shape[1])
    setattr(cache, COMPRESSED_FLAG, True)
    enable_compressed_decoding(model)
    try:
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        full_ids = torch.cat([ids, first], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(first)], dim=1)
        cont = model.generate(full_ids, attention_mask=full_mask, cache=cache, max_new_tokens=5,
                              do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    finally:
        disable_compressed_decoding(model)
    assert torch.equal(cont.sequences, base.sequences)
    for got, want in zip(cont.scores, base.scores[1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
