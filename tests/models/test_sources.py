"""Which model ``load_model`` is given (``kvpress_lab.models.sources``), and failing fast when the Hub cannot answer."""

from __future__ import annotations

import time

import pytest

import kvpress_lab.models.load as load_module
from kvpress_lab.models import ModelNotFoundError, ModelSource, load_model, resolve_model_source
from kvpress_lab.models import sources


def test_embedded_names_any_case():
    for name in ("smollm2-135m-instruct", "SmolLM2-135M-Instruct", " embedded "):
        assert resolve_model_source(name) == ModelSource("embedded", "")


def test_a_checkpoint_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "other.gguf").write_bytes(b"")  # config.json wins: it is a transformers checkpoint
    assert resolve_model_source(str(tmp_path)) == ModelSource("checkpoint", str(tmp_path))


def test_a_gguf_file_and_a_folder_holding_one(tmp_path):
    (tmp_path / "model.Q4.gguf").write_bytes(b"")
    expected = ModelSource("gguf", str(tmp_path), "model.Q4.gguf")
    assert resolve_model_source(tmp_path / "model.Q4.gguf") == expected
    assert resolve_model_source(str(tmp_path)) == expected
    assert expected.describe() == f"local GGUF file {tmp_path / 'model.Q4.gguf'}"


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_model_source("~/m.gguf") == ModelSource("gguf", str(tmp_path), "m.gguf")


@pytest.mark.parametrize(("setup", "words"), [
    ("two-gguf", "holds 2 GGUF files (a.gguf, b.gguf)"),
    ("empty", "neither a config.json"),
    ("text-file", "is a file but not a GGUF file"),
    ("missing", "does not exist"),
])
def test_paths_that_hold_no_model(tmp_path, setup, words):
    target = tmp_path / "m"
    if setup == "two-gguf":
        target.mkdir()
        (target / "a.gguf").write_bytes(b"")
        (target / "b.gguf").write_bytes(b"")
    elif setup == "empty":
        target.mkdir()
    elif setup == "text-file":
        target.write_text("hello")
    with pytest.raises(ModelNotFoundError, match=words.replace("(", r"\(").replace(")", r"\)")):
        resolve_model_source(str(target))


def test_a_missing_path_near_the_embedded_name_suggests_it():
    with pytest.raises(ModelNotFoundError, match="Did you mean the embedded model 'smollm2-135m-instruct'"):
        resolve_model_source("./smollm2")


def test_anything_else_is_a_hub_id():
    assert resolve_model_source("Qwen/Qwen3-0.6B") == ModelSource("hub", "Qwen/Qwen3-0.6B")
    assert resolve_model_source("gpt2") == ModelSource("hub", "gpt2")


@pytest.mark.parametrize("name", ["smollm2", "SmolLM2-135M", "smollm-135m-instruct"])
def test_near_misses_of_the_embedded_name(name):
    assert sources.embedded_suggestion(name) == "smollm2-135m-instruct"


@pytest.mark.parametrize("name", ["gpt2", "Qwen/Qwen3-0.6B", "llama", "embedded"])
def test_other_names_are_not_near_misses(name):
    assert sources.embedded_suggestion(name) is None


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_is_read_from_the_environment(monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    assert sources.hub_unreachable_reason() == f"offline mode ({variable}=1)"


def test_an_unreachable_hub_is_reported(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    reason = sources.hub_unreachable_reason()
    assert reason is not None and reason.startswith("no connection to 127.0.0.1:9")


def test_a_typo_offline_fails_at_once_with_what_was_tried_and_a_suggestion(monkeypatch, tmp_path):
    """No Hub request at all: only the (empty) local cache is read, in well under the Hub client's retry time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hub cache
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        load_model("smollm2")
    message = str(info.value)
    assert message.startswith("Cannot load the model 'smollm2'. Tried: the embedded names")
    assert "a local path: no file or folder 'smollm2' here" in message
    assert "the Hub not being asked (offline mode (HF_HUB_OFFLINE=1)): not cached there" in message
    assert message.endswith("Did you mean the embedded model 'smollm2-135m-instruct'?")
    assert time.perf_counter() - started < 20  # generous: what matters is no retry loop against the Hub


def test_an_unreachable_hub_reads_only_the_local_cache(monkeypatch):
    """Without offline mode, an unreachable Hub makes from_pretrained run with local_files_only=True."""
    seen = []

    class Refusing:
        @staticmethod
        def from_pretrained(location, **kwargs):
            seen.append((location, kwargs.get("local_files_only")))
            raise OSError("not in the cache")

    import transformers

    monkeypatch.setattr(sources, "hub_unreachable_reason", lambda: "no connection to huggingface.co:443 (test)")
    monkeypatch.setattr(load_module, "hub_unreachable_reason", sources.hub_unreachable_reason)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Refusing)
    with pytest.raises(ModelNotFoundError, match=r"the Hub not being asked \(no connection to huggingface.co:443"):
        load_model("org/model")
    assert seen == [("org/model", True)]


def test_a_gguf_file_needs_the_models_extra(monkeypatch, tmp_path):
    import importlib.util

    from kvpress_lab.extras import MissingExtraError

    (tmp_path / "m.gguf").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"loading the GGUF file m.gguf needs gguf.*kvpress-lab\[models\]"):
        load_model(tmp_path / "m.gguf")
