"""``kvpress-lab bench ...`` end to end on a tiny random Llama with a character tokenizer (fast)."""

from __future__ import annotations

import json

import pytest

from kvpress_lab.benchmarks import bench
from kvpress_lab.benchmarks.results import read_meta, read_rows
from kvpress_lab.cli import main


@pytest.fixture(autouse=True)
def tiny(monkeypatch, tiny_llama, char_tokenizer):
    monkeypatch.setattr(bench, "load", lambda args: (tiny_llama, char_tokenizer))


def test_needle_sweep_resumes_and_plots(tmp_path, capsys):
    out = tmp_path / "needle.jsonl"
    argv = ["bench", "needle", "--lengths", "128", "--depths", "0,1", "--recipes", "full,snapkv", "--budgets", "32",
            "--out", str(out), "--no-progress", "--max-new-tokens", "2"]
    assert main([*argv, "--shard", "0/2"]) == 0
    assert len(read_rows(out)) == 2  # cells 0 and 2 of 4
    assert main(argv) == 0
    rows = read_rows(out)
    assert sorted(r["cell"] for r in rows) == ["full|-|L=128|d=0", "full|-|L=128|d=1", "snapkv|32|L=128|d=0",
                                               "snapkv|32|L=128|d=1"]
    assert "ran 2 cells, skipped 2" in capsys.readouterr().out
    assert out.with_suffix(".png").is_file() and len(read_meta(out)) == 2


def test_ruler_sweep_scores_every_task(tmp_path, capsys):
    out = tmp_path / "ruler.jsonl"
    assert main(["bench", "ruler", "--lengths", "64", "--samples", "1", "--recipes", "full,streamingllm",
                 "--budgets", "32", "--out", str(out), "--no-progress", "--mode", "query-agnostic",
                 "--max-new-tokens", "3"]) == 0
    rows = read_rows(out)
    assert {r["task"] for r in rows} == set(bench.RULER_MAX_NEW_TOKENS) and len(rows) == 10
    assert all(0 <= r["score"] <= 100 and r["mode"] == "query-agnostic" for r in rows)
    assert "niah_single" in capsys.readouterr().out


def test_longbench_sweep_on_hand_written_records(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    records = {
        "hotpotqa": {"input": "Who?", "context": "Passage 1:\nAda wrote it.", "answers": ["Ada"], "all_classes": None},
        "trec": {"input": "Where is Rome?", "context": "Question: Who? Type: Person", "answers": ["Location"],
                 "all_classes": ["Location", "Person"]},
    }
    for task, fields in records.items():
        line = {**fields, "length": 5, "language": "en", "_id": f"{task}-0"}
        (data / f"{task}.jsonl").write_text(json.dumps(line) + "\n")
    out = tmp_path / "lb.jsonl"
    assert main(["bench", "longbench", "--data-dir", str(data), "--recipes", "full,snapkv", "--budgets", "16",
                 "--out", str(out), "--no-progress", "--max-length", "64", "--max-new-tokens", "3"]) == 0
    rows = read_rows(out)
    assert sorted((r["task"], r["recipe"]) for r in rows) == [("hotpotqa", "full"), ("hotpotqa", "snapkv"),
                                                             ("trec", "full"), ("trec", "snapkv")]
    assert all(r["prompt_tokens"] <= 64 for r in rows)
    table = capsys.readouterr().out
    assert "hotpotqa" in table and "average" in table
    assert read_meta(out)[0]["config"]["max_length"] == 64


def test_speed_writes_a_result_file(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--lengths", "150", "--recipes", "full,pyramidkv", "--budgets", "32",
                 "--decode-steps", "2", "--out", str(out), "--no-progress"]) == 0
    payload = json.loads(out.read_text())
    assert [r["recipe"] for r in payload["rows"]] == ["full", "pyramidkv"]
    assert payload["meta"]["benchmark"] == "speed" and "overhead s" in capsys.readouterr().out
