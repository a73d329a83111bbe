"""A reduced ``kvpress-lab demo`` on the real embedded model (SmolLM2-135M-Instruct, CPU)."""

from __future__ import annotations

import json

import pytest

from helpers.embedded import embedded  # noqa: F401 (fixture)
from kvpress_lab.benchmarks.demo import run_demo

pytestmark = pytest.mark.slow


def test_reduced_demo_writes_table_png_and_json(tmp_path, embedded, capsys):
    model, tokenizer = embedded
    result = run_demo(None, tmp_path, lengths=[384], depths=[0.5], budgets=[64], recipes=["streamingllm", "snapkv"],
                      model=model, tokenizer=tokenizer, progress=False)
    printed = capsys.readouterr().out
    assert result.table in printed and "needle_heatmap.png" in printed
    by_recipe = {(s["recipe"], s["budget"]): s for s in result.summary}
    assert set(by_recipe) == {("full", None), ("streamingllm", 64), ("snapkv", 64)}
    # the full cache finds the needle; both 64-entry caches hold ~17% of its bytes
    assert by_recipe[("full", None)]["accuracy"] == 1.0
    assert 0.1 < by_recipe[("snapkv", 64)]["kv_share"] < 0.25
    rows = json.loads(result.json_path.read_text())["rows"]
    assert all(0 <= 384 - r["prompt_tokens"] <= 25 for r in rows)
    assert result.heatmap_path.stat().st_size > 1000


def test_run_command_prints_answer_cache_sizes_and_timings(tmp_path, embedded, monkeypatch, capsys):
    from kvpress_lab.benchmarks import commands
    from kvpress_lab.benchmarks.needle import build_needle_prompt, token_counter
    from kvpress_lab.cli import main

    model, tokenizer = embedded
    monkeypatch.setattr(commands, "load", lambda args: (model, tokenizer))
    prompt = build_needle_prompt(300, 0.5, token_counter(tokenizer), seed=1)
    path = tmp_path / "prompt.txt"
    path.write_text(prompt.context + prompt.question)
    assert main(["run", "--prompt-file", str(path), "--preset", "snapkv", "--budget", "64", "--max-new-tokens", "7"]) == 0
    out, err = capsys.readouterr()
    assert out.strip()[:3] == prompt.passcode[:3]  # the answer (compression may garble a later digit)
    assert "KV cache" in err and "before ->" in err and "prefill" in err and "ms/token" in err
    assert '"budget": 64' in err and "snapkv" in err
