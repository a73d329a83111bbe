"""Tests of ``load_model`` and the embedded model's names (``kvpress_lab.models.load``)."""

from __future__ import annotations

import pathlib

import pytest
import torch

from kvpress_lab.models import is_embedded_model_name, load_model


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("smollm2-135m-instruct", True),
        ("SmolLM2-135M-Instruct", True),
        ("embedded", True),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", False),
        ("./smollm2-135m-instruct", False),
        (pathlib.Path("embedded"), False),
    ],
)
def test_embedded_name_matching(name: str, expected: bool) -> None:
    assert is_embedded_model_name(name) is expected


# ---------------------------------------------------------------------------------------
# Argument validation (fails before anything is loaded)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name_or_path": 123}, TypeError),
        ({"dtype": torch.int8}, ValueError),
        ({"dtype": "float33"}, ValueError),
        ({"dtype": 32}, TypeError),
        ({"attn_implementation": ""}, TypeError),
        ({"device": "not-a-device"}, ValueError),
        ({"device": 0.5}, TypeError),
        ({"dtype": "automatic"}, ValueError),
        ({"device_map": 1.5}, TypeError),
        ({"device_map": True}, TypeError),
        ({"device": "cpu", "device_map": "cpu"}, ValueError),
    ],
)
def test_load_model_rejects_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match="Expected"):
        load_model(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# The real model (converted once per machine, loaded once per module)
# ---------------------------------------------------------------------------------------


def test_device_map_needs_accelerate(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ValueError, match="accelerate"):
        load_model(device_map="auto")


@pytest.fixture()
def bf16_checkpoint(tmp_path: pathlib.Path, converted_checkpoint: pathlib.Path) -> pathlib.Path:
    """A tiny random Llama saved in bfloat16, with the embedded model's tokenizer files."""
    import shutil

    from helpers.tiny_models import tiny_model

    tiny_model("llama").to(torch.bfloat16).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(converted_checkpoint / name, tmp_path / name)
    return tmp_path


def test_auto_dtype_is_the_checkpoints_own(bf16_checkpoint: pathlib.Path) -> None:
    model, _ = load_model(str(bf16_checkpoint), dtype="auto")
    assert model.dtype == torch.bfloat16
    model, _ = load_model(str(bf16_checkpoint))  # the default stays float32
    assert model.dtype == torch.float32


def test_device_map_and_other_options_reach_from_pretrained(bf16_checkpoint: pathlib.Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    seen: dict[str, object] = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = load_model(str(bf16_checkpoint), dtype="auto", device_map="cpu", revision="main")
    assert (seen["dtype"], seen["device_map"], seen["revision"]) == ("auto", "cpu", "main")
    assert model.device.type == "cpu" and model.dtype == torch.bfloat16 and not model.training
    seen.clear()
    load_model(str(bf16_checkpoint))
    assert "device_map" not in seen  # without device_map the model is moved with .to(device)


@pytest.fixture(scope="module")
def embedded(converted_checkpoint: pathlib.Path):
    return load_model()


@pytest.mark.slow
def test_loaded_model_is_ready_for_inference(embedded) -> None:
    model, tokenizer = embedded
    assert not model.training
    assert model.dtype == torch.float32
    assert model.device.type == "cpu"
    assert model.config.model_type == "llama"
    assert getattr(model, "hf_quantizer", None) is None
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id == model.generation_config.pad_token_id == 2


@pytest.mark.slow
def test_greedy_generation_knows_the_capital_of_france(embedded) -> None:
    model, tokenizer = embedded
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    completion = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
    assert completion.startswith(" Paris")


@pytest.mark.slow
def test_alias_loads_the_same_checkpoint(embedded) -> None:
    model, _ = embedded
    alias_model, _ = load_model("embedded")
    assert pathlib.Path(alias_model.name_or_path) == pathlib.Path(model.name_or_path)


@pytest.mark.slow
def test_other_names_go_to_from_pretrained(converted_checkpoint: pathlib.Path) -> None:
    model, tokenizer = load_model(str(converted_checkpoint), dtype="bfloat16", attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert tokenizer.padding_side == "left"


@pytest.mark.slow
def test_embedded_model_honours_auto_dtype_and_device_map(converted_checkpoint: pathlib.Path) -> None:
    model, tokenizer = load_model("embedded", dtype="auto", device_map="cpu")
    assert model.dtype == torch.float32  # the converted checkpoint is float32
    assert model.device.type == "cpu" and tokenizer.padding_side == "left"
    model, _ = load_model("embedded", dtype="bfloat16", device_map="auto")
    assert model.dtype == torch.bfloat16
