"""The README's Python examples: each block runs on its own, offline, and prints what the README shows.

Every ```python block of the README is run by itself in a fresh interpreter (nothing defined by
an earlier block is available), with the network switched off for the Hugging Face libraries;
when a ```text block introduced by "prints" follows it, the output must be exactly that text
(greedy decoding on the embedded model is deterministic). The one hub example says that it needs
internet and is the only block not run.
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


def readme_blocks() -> list[tuple[str, str | None]]:
    """Every ```python block of the README with the text of the ```text block printed after it (or ``None``)."""
    text = README.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```python\n(.*?)^```\n", text, flags=re.DOTALL | re.MULTILINE):
        after = re.match(r"\n[^`\n]*prints[^\n]*\n\n```text\n(.*?)^```", text[match.end():], flags=re.DOTALL | re.MULTILINE)
        found.append((match.group(1), after.group(1) if after else None))
    return found


def is_hub_example(code: str) -> bool:
    return "from_pretrained(" in code and "Qwen/" in code


RUNNABLE = [(code, printed) for code, printed in readme_blocks() if not is_hub_example(code)]


def test_every_block_but_the_hub_one_is_run():
    blocks = readme_blocks()
    assert len(blocks) - len(RUNNABLE) == 1  # the hub example only
    assert sum(printed is not None for _, printed in RUNNABLE) >= 3  # the first, ask-many and pipeline outputs


def test_ask_many_examples_use_a_query_agnostic_method():
    """Compress once, ask many: the questions are unknown at compression, so no window scorer (snapkv, pyramidkv)."""
    many = [code for code, _ in RUNNABLE if "ask(" in code or "pipeline" in code]
    assert len(many) >= 2
    for code in many:
        presets = re.findall(r'Recipe\.preset\("([\w-]+)"', code)
        assert presets and set(presets) <= {"kvzip", "keydiff"}, presets


@pytest.mark.parametrize("index", range(len(RUNNABLE)), ids=lambda i: RUNNABLE[i][0].strip().splitlines()[0][:40])
def test_each_block_runs_on_its_own_and_prints_what_the_readme_shows(converted_checkpoint, tmp_path, index):
    code, printed = RUNNABLE[index]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    if printed is not None:
        assert result.stdout.strip().splitlines() == printed.strip().splitlines()
