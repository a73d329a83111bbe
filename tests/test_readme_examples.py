"""The README's Python examples: the first one runs as written, offline, on the embedded model.

The ```python blocks of the "Using it from Python" section are extracted from README.md. The
first is run in a fresh interpreter with the network switched off for the Hugging Face libraries
(it must need none); the hub example after it must say that it needs internet.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.embedded import INSTALL_HINT, has_distribution

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_offline_example_comes_first_and_the_hub_one_is_labelled():
    text = section("Using it from Python")
    blocks = python_blocks(text)
    assert len(blocks) >= 2
    offline, hub = blocks[0], blocks[1]
    assert 'load_model("smollm2-135m-instruct")' in offline and "cache_report(" in offline
    assert "from_pretrained" not in offline
    assert "Qwen/" in hub
    before_hub = text[: text.index("```python\n" + hub)]
    label = before_hub.rstrip().rsplit("\n", 1)[-1]
    assert "with a model from the hugging face hub (needs internet)" in label.lower()


@pytest.fixture(scope="module")
def converted_checkpoint() -> Path:
    """The embedded model's converted checkpoint (converted once per machine, as in tests/models)."""
    if not has_distribution():
        pytest.skip(f"{INSTALL_HINT} to run the README example")
    from kvpress_lab.models import embedded_checkpoint_dir

    return embedded_checkpoint_dir()


def test_the_offline_example_runs_as_written(converted_checkpoint, tmp_path):
    code = python_blocks(section("Using it from Python"))[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    answers = [line for line in lines if line.startswith("Answer: ")]
    assert len(answers) == 1 and answers[0].removeprefix("Answer: ").strip(), result.stdout
    summary = [line for line in lines if line.startswith("KV cache: ")]
    assert len(summary) == 1, result.stdout
    assert re.fullmatch(r"KV cache: [\d.]+ \w?i?B of [\d.]+ \w?i?B uncompressed \([\d.]+%\), 30 layers "
                        r"\(\d+ compressed\), 1 row", summary[0]), summary[0]


def test_the_ask_many_example_runs_as_written_and_prints_what_the_readme_says(converted_checkpoint, tmp_path):
    text = section("Using it from Python")
    code = next(block for block in python_blocks(text) if "ask(" in block)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    documented = text[text.index("```python\n" + code):]
    documented = documented[documented.index("```text\n") + len("```text\n"):]
    documented = documented[: documented.index("```")].strip().splitlines()
    assert result.stdout.strip().splitlines() == documented  # greedy decoding: the README shows the real output
