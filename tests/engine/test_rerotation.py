"""Key re-rotation: kept keys equal an explicit re-rotation by hand, and decoding equals a plain forward
over the kept tokens placed at positions 0..k-1 (where that equivalence holds: one layer, one kept set)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_models import FAMILIES, left_pad, random_prompt, tiny_model

from kvpress_lab import Recipe, UnsupportedCacheError
from kvpress_lab.engine.padding import padded_positions


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x, positions, inv_freq, scale):
    """``scale * (x cos + rotate_half(x) sin)`` at ``positions`` (n,), float64: RoPE written out."""
    angles = positions.double()[:, None] * inv_freq.double()[None, :]  # (n, D/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return scale * (x * cos + _rotate_half(x) * sin)


def _unrope(x, positions, inv_freq, scale):
    angles = positions.double()[:, None] * inv_freq.double()[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return (x * cos - _rotate_half(x) * sin) / scale


def _inv_freq(model):
    rotary = model.model.rotary_emb
    inv_freq = getattr(rotary, "inv_freq", None)
    if inv_freq is None:  # Gemma3: one table per layer type; compressed layers are the full-attention ones
        inv_freq = rotary.full_attention_inv_freq
    return inv_freq, float(getattr(rotary, "attention_scaling", None) or getattr(rotary, "full_attention_attention_scaling", 1.0))


def _model(family):
    if family != "llama-yarn":
        return tiny_model(family)
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.tiny_models import _COMMON

    config = dict(_COMMON, max_position_embeddings=128)  # YaRN: attention scaling 1.14 folded into the rotary tables
    config = LlamaConfig(**config, num_hidden_layers=2, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0})
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("family", FAMILIES + ("llama-yarn",))
@pytest.mark.parametrize("scorer, head_allocation, allocator", [
    ("sink", "uniform", "uniform"), ("snapkv_window", "adaptive", "uniform"), ("snapkv_window", "uniform", "pyramid"),
])
def test_kept_keys_equal_an_explicit_rerotation(family, scorer, head_allocation, allocator):
    model = _model(family)
    ids, mask = left_pad([random_prompt(1, n, seed=n)[0] for n in (33, 24)])
    positions = padded_positions(mask)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True).cache
    recipe = Recipe(allocator=allocator, scorer=scorer, budget=12, window=3, head_allocation=head_allocation, rerotate_keys=True)
    with recipe.apply(model, record_indices=True) as session:
        with torch.no_grad():
            cache = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True).cache
    inv_freq, scale = _inv_freq(model)
    real = mask.sum(-1).tolist()
    pad = [ids.shape[1] - n for n in real]
    assert session.selections
    for idx, selection in session.selections.items():
        layer = cache.layers[idx]
        for b in range(2):
            for h in range(2):
                slots = selection.indices[b, h][selection.valid[b, h]]
                k = len(slots)
                original = (slots - pad[b]).double()  # positions the keys were rotated at
                target = torch.arange(real[b] - k, real[b]).double()  # k contiguous positions ending before the next token
                raw = _unrope(full.layers[idx].keys[b, h, slots].double(), original, inv_freq, scale)
                expected = _rope(raw, target, inv_freq, scale)
                held_keys, held_values = layer.head_entries(b, h)
                torch.testing.assert_close(held_keys.double(), expected, rtol=1e-5, atol=1e-5)
                assert torch.equal(held_values, full.layers[idx].values[b, h, slots])  # values untouched
                if k < real[b] and original[0] != target[0]:  # something moved: the re-rotation did something
                    assert not torch.allclose(held_keys, full.layers[idx].keys[b, h, slots], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_equals_a_plain_forward_over_the_kept_tokens_at_positions_0_to_k(family):
    """One layer: the kept entries depend only on their own tokens, so the rerotated cache is exactly the cache of a
    plain forward over the kept tokens at positions 0..k-1, and every later step must give the same logits."""
    model = tiny_model(family, layers=1)
    ids = random_prompt(1, 25, seed=3)
    recipe = Recipe(scorer="sink", scorer_kwargs={"num_sinks": 4}, budget=10, window=4, rerotate_keys=True)
    with recipe.apply(model, record_indices=True) as session:
        out = model.generate(ids, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=0)
    kept = session.selections[0].indices[0, 0].tolist()
    assert kept == [0, 1, 2, 3] + list(range(19, 25))
    generated = out.sequences[:, 25:]
    plain_ids = torch.cat([ids[:, kept], generated[:, :-1]], dim=1)  # kept tokens at 0..9, then the generated ones
    with torch.no_grad():
        plain = model(input_ids=plain_ids).logits  # (1, 15, V)
    for step in range(1, 6):  # step 0 is the prefill's own logits (full prompt); later steps read the cache
        torch.testing.assert_close(out.scores[step], plain[:, 9 + step], rtol=1e-4, atol=1e-4)
    # control: without re-rotation the kept keys keep their true positions and the logits differ
    with Recipe(scorer="sink", scorer_kwargs={"num_sinks": 4}, budget=10, window=4).apply(model):
        unrotated = model.generate(ids, max_new_tokens=2, do_sample=False, output_scores=True, return_dict_in_generate=True,
                                   pad_token_id=0)
    assert not torch.allclose(unrotated.scores[1], plain[:, 10], atol=1e-3)


def test_rerotation_is_part_of_the_recipe_and_refused_where_unsupported():
    recipe = Recipe.preset("streamingllm-rerotated")
    assert recipe.rerotate_keys and Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe().rerotate_keys is False
    with pytest.raises(TypeError, match="rerotate_keys"):
        Recipe(rerotate_keys="yes")
    with pytest.raises(ValueError, match="does not combine with decode_budget"):
        Recipe(rerotate_keys=True, decode_budget=32)
    model = tiny_model("llama")
    with pytest.raises(UnsupportedCacheError, match=r"rerotate_keys=True \(keys are re-rotated once"):
        Recipe(budget=16, rerotate_keys=True).prefill(model, random_prompt(1, 40), chunk_size=16)
