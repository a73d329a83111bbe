"""A model placed by a ``device_map`` dict (accelerate hooks) compresses exactly like the same model in one piece.

This machine has one device, so the split is between ``"cpu"`` and ``"disk"``: the disk layers'
weights sit on the meta device and accelerate's hooks bring them in for each forward, the same
dispatch machinery that moves activations between GPUs. Every role must then work on what the
layer's forward produced, never on the module's weights or the model's first device.
"""

from __future__ import annotations

import pytest
import torch

from helpers.kvzip_prompt import TINY_PROMPT
from helpers.tiny_models import left_pad, random_prompt, tiny_model
from kvpress_lab import Recipe
from kvpress_lab.benchmarks.results import model_settings
from kvpress_lab.models import load_model

pytest.importorskip("accelerate")

RECIPES = [
    Recipe.preset("snapkv", budget=16, window=4),
    Recipe.preset("h2o", budget=16, window=4),
    Recipe.preset("adaptive", budget=16, window=4),  # global scope: scores of every layer gathered together
    Recipe.preset("adakv", budget=16, window=4),  # per-head budgets: ragged layers
    Recipe.preset("criticalkv", budget=16, window=4),  # reads o_proj's weight: from accelerate's offload map when on meta
    Recipe.preset("expected-attention", budget=16),
    Recipe.preset("kvzip", budget=16, scorer_kwargs=TINY_PROMPT),  # scores from extra forwards of the model
    Recipe.preset("snapkv-merge", budget=16, window=4),
]
SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}


class _Tokenizer:  # load_model loads a tokenizer too; the test never uses it
    pad_token = "<pad>"
    padding_side = "left"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("tiny")
    whole = tiny_model("llama")
    whole.save_pretrained(folder)
    original = transformers.AutoTokenizer.from_pretrained
    transformers.AutoTokenizer.from_pretrained = lambda *a, **k: _Tokenizer()
    try:
        split, _ = load_model(str(folder), dtype="auto", device_map=SPLIT, offload_folder=str(folder / "offload"))
    finally:
        transformers.AutoTokenizer.from_pretrained = original
    split.generation_config.eos_token_id = None
    return whole, split


def _state(layer):
    if hasattr(layer, "flat_keys"):
        return (layer.flat_keys, layer.flat_values, layer.lengths, layer.get_seq_length())
    if hasattr(layer, "dense_entries"):
        return (*layer.dense_entries(), layer.get_seq_length())
    return (layer.keys, layer.values, layer.get_seq_length())


def test_the_split_really_dispatches(models):
    _, split = models
    assert split.hf_device_map == SPLIT
    assert split.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # weights come in through hooks
    assert hasattr(split.model.layers[1], "_hf_hook")
    assert model_settings(split)["device"] == "cpu,disk"  # the result files record every device of the map


CASES = [pytest.param(recipe, 1, id=f"{recipe.preset_name}-1") for recipe in RECIPES] + [pytest.param(RECIPES[0], 2, id="snapkv-2"), pytest.param(RECIPES[2], 2, id="adaptive-2")]


@pytest.mark.parametrize("recipe, batch", CASES)
def test_split_model_compresses_and_decodes_like_the_whole_model(models, recipe, batch):
    whole, split = models
    if batch == 1:
        ids, mask = random_prompt(1, 40), None
    else:
        ids, mask = left_pad([random_prompt(1, 40)[0], random_prompt(1, 29, seed=1)[0]])
    expected, got = recipe.prefill(whole, ids, mask), recipe.prefill(split, ids, mask)
    assert [type(layer) for layer in got.layers] == [type(layer) for layer in expected.layers]
    for layer_a, layer_b in zip(expected.layers, got.layers):
        for a, b in zip(_state(layer_a), _state(layer_b), strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    question = torch.cat([ids, random_prompt(ids.shape[0], 3, seed=2)], dim=1)
    question_mask = None if mask is None else torch.cat([mask, torch.ones(ids.shape[0], 3, dtype=mask.dtype)], dim=1)
    outputs = [model.generate(question, attention_mask=question_mask, cache=cache, max_new_tokens=4,
                              do_sample=False, pad_token_id=0) for model, cache in ((whole, expected), (split, got))]
    assert torch.equal(outputs[0], outputs[1])
