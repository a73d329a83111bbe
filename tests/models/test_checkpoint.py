"""Tests of the embedded model's cached checkpoint (``kvpress_lab.models.checkpoint``).

The conversion machinery (lock, atomic rename, env var) runs with a fake converter; the
last tests check the real checkpoint that the ``converted_checkpoint`` fixture converts.
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import filelock
import pytest

from helpers.embedded import fake_converter, needs_distribution, package_version
from kvpress_lab.models import CACHE_DIR_ENV, EMBEDDED_MODEL_NAME, embedded_checkpoint_dir
from kvpress_lab.models import convert as convert_module

# ---------------------------------------------------------------------------------------
# The cache folder (nothing converted)
# ---------------------------------------------------------------------------------------


@needs_distribution
def test_cache_dir_env_var_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    path = embedded_checkpoint_dir(convert=False)
    assert path == tmp_path.resolve() / "models" / f"{EMBEDDED_MODEL_NAME}-{package_version()}"
    assert not path.exists()


@needs_distribution
def test_default_cache_dir_is_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".cache" / "kvpress_lab" / "models" / f"{EMBEDDED_MODEL_NAME}-{package_version()}"
    assert embedded_checkpoint_dir(convert=False) == expected


# ---------------------------------------------------------------------------------------
# Conversion machinery, with a fake converter (fast)
# ---------------------------------------------------------------------------------------


@needs_distribution
def test_conversion_runs_once_and_is_atomic(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    calls: list[pathlib.Path] = []
    monkeypatch.setattr(convert_module, "convert_gguf_to_checkpoint", fake_converter(calls))

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

    monkeypatch.setattr(convert_module, "convert_gguf_to_checkpoint", crash)
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
    monkeypatch.setattr(convert_module, "convert_gguf_to_checkpoint", fake_converter(calls))

    assert embedded_checkpoint_dir() == target
    assert len(calls) == 1
    assert not (target / "junk").exists()
    assert not stale.exists()


@needs_distribution
def test_concurrent_conversions_wait_for_one_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two threads convert at once: the second waits on the file lock, then reuses the first's folder."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    caplog.set_level(logging.INFO, logger="kvpress_lab.models")
    target = embedded_checkpoint_dir(convert=False)
    lock_path = target.parent / f".{target.name}.lock"
    weights = bytes(range(256)) * 4096  # 1 MiB, written in chunks: a second writer would interleave
    calls: list[pathlib.Path] = []
    converting, release = threading.Event(), threading.Event()

    def slow_converter(gguf_path: pathlib.Path, output_dir: pathlib.Path) -> None:
        calls.append(output_dir)
        converting.set()
        assert release.wait(timeout=60), "the test never let the conversion finish"
        with open(output_dir / "model.safetensors", "wb") as handle:
            for start in range(0, len(weights), 65536):
                handle.write(weights[start : start + 65536])
                time.sleep(0.001)
        (output_dir / "config.json").write_text('{"model_type": "llama"}')

    monkeypatch.setattr(convert_module, "convert_gguf_to_checkpoint", slow_converter)

    def waiting_logged() -> bool:
        return any("Waiting for another process to finish converting" in m for m in caplog.messages)

    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            first = pool.submit(embedded_checkpoint_dir)
            assert converting.wait(timeout=60), "the first conversion never started"
            # The converting thread holds the lock through filelock: nobody else can take it.
            with pytest.raises(filelock.Timeout):
                filelock.FileLock(lock_path).acquire(timeout=0)
            second = pool.submit(embedded_checkpoint_dir)
            deadline = time.monotonic() + 60
            while not waiting_logged() and time.monotonic() < deadline and not second.done():
                time.sleep(0.01)
            assert waiting_logged(), "the second conversion did not wait for the lock"
        finally:
            release.set()
        paths = [first.result(timeout=60), second.result(timeout=60)]

    assert paths == [target, target]
    assert len(calls) == 1
    assert (target / "model.safetensors").read_bytes() == weights
    assert json.loads((target / "config.json").read_text()) == {"model_type": "llama"}
    assert json.loads((target / ".kvpress_lab_conversion.json").read_text())["source_file"].endswith(".gguf")
    assert {p.name for p in target.parent.iterdir()} - {lock_path.name} == {target.name}  # no temp folder
    probe = filelock.FileLock(lock_path)
    probe.acquire(timeout=0)  # released once both are done
    probe.release()


# ---------------------------------------------------------------------------------------
# The real checkpoint (converted once per machine)
# ---------------------------------------------------------------------------------------


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

    monkeypatch.setattr(convert_module, "convert_gguf_to_checkpoint", must_not_convert)
    assert embedded_checkpoint_dir() == converted_checkpoint
    after = {p.name: p.stat().st_mtime_ns for p in converted_checkpoint.iterdir()}
    assert after == before
