"""Our side of the fidelity harness on a tiny random model, and the whole command with a fake kvpress side.

CI has no kvpress: the side is replaced by a function writing records of the same format, so
every line of the harness but the side environment runs here in a few seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.hf_char_tokenizer import hf_char_tokenizer
from helpers.tiny_models import random_prompt, tiny_model

from kvpress_lab import Recipe
from kvpress_lab.benchmarks import fidelity
from kvpress_lab.benchmarks.fidelity_ours import run_ours
from kvpress_lab.benchmarks.kvpress_side import mask_from_kept_indices
from kvpress_lab.engine.prefill import forward_cache

JOB = {"max_new_tokens": 3, "eos_token_ids": []}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=2)  # L = 2, Hkv = 2: 4 layer-heads


def _selected(model, recipe, ids) -> torch.Tensor:
    """``(L, Hkv, T)`` kept mask from the engine's own record of what it selected."""
    with torch.no_grad(), recipe.apply(model, record_indices=True) as session:
        forward_cache(model, ids)
    masks = []
    for idx in range(model.config.num_hidden_layers):
        selection = session.selections[idx]
        masks.append(torch.stack([mask_from_kept_indices(selection.indices[0, h][selection.valid[0, h]][None],
                                                         ids.shape[1])[0] for h in range(2)]))
    return torch.stack(masks)


@pytest.mark.parametrize("preset", ["snapkv-kvpress", "adakv", "streamingllm-rerotated"])
def test_recovered_kept_positions_are_what_the_engine_selected(model, preset):
    ids = {"prompts": {"p": {"context_ids": random_prompt(1, 160), "question_ids": random_prompt(1, 4, seed=1)}}}
    recipe = Recipe.preset(preset, compression_ratio=0.5)
    runs = [{"case": "snapkv", "ratio": 0.5, "prompt": "p", "seed": 0}]
    (record,) = run_ours(model, runs, {("snapkv", 0.5): recipe}, ids, JOB)
    assert record["error"] is None
    assert torch.equal(record["kept"], _selected(model, recipe, ids["prompts"]["p"]["context_ids"]))
    assert len(record["answer_ids"]) == 3 and record["first_logits"].shape == (model.config.vocab_size,)
    if preset == "adakv":  # per-head budgets: the heads of a layer keep different counts
        assert len(set(record["kept"].sum(dim=-1).flatten().tolist())) > 1


def test_decoding_case_recovers_the_final_cache_over_prefill_and_forced_tokens(model):
    ids = {"prompts": {"decoding": {"context_ids": random_prompt(1, 100)}}, "continuation_ids": random_prompt(1, 24, seed=2)}
    recipe = Recipe(scorer="knorm", decode_budget=40, compress_every=8, compress_prefill=False)
    runs = [{"case": "decoding_knorm", "ratio": None, "prompt": "decoding", "seed": 0}]
    (record,) = run_ours(model, runs, {("decoding_knorm", None): recipe}, ids, JOB)
    assert record["error"] is None
    kept = record["kept"]
    assert kept.shape == (2, 2, 124)
    counts = kept.sum(dim=-1)
    assert bool((counts >= 40).all()) and bool((counts < 48 + 1).all())  # cut back to 40, then < 8 more held
    assert bool(kept[..., -1].all())  # the last forced token is still cached
    assert not bool(kept[..., :100].all())  # the prompt was compressed during decoding


def test_a_failing_run_records_its_error_and_the_others_go_on(model):
    ids = {"prompts": {"p": {"context_ids": random_prompt(1, 64), "question_ids": random_prompt(1, 2, seed=1)}}}
    runs = [{"case": "snapkv", "ratio": 0.5, "prompt": "missing", "seed": 0},
            {"case": "snapkv", "ratio": 0.5, "prompt": "p", "seed": 0}]
    records = run_ours(model, runs, {("snapkv", 0.5): Recipe(compression_ratio=0.5)}, ids, JOB)
    assert records[0]["error"] == "KeyError: 'missing'" and records[1]["error"] is None


def _fake_side(python, command, job_dir, threads):
    """Writes what kvpress_side writes: kvpress keeps every position and answers [5, 6, 7]."""
    job = json.loads((job_dir / "job.json").read_text())
    ids = torch.load(job_dir / "job_ids.pt")
    records = []
    for run in job["runs"]:
        length = ids["prompts"][run["prompt"]]["context_ids"].shape[1]
        if run["case"] == "decoding_knorm":
            length += ids["continuation_ids"].shape[1]
        records.append({**run, "kept": torch.ones(2, 2, length, dtype=torch.bool), "answer_ids": [5, 6, 7],
                        "first_logits": torch.zeros(97), "prefill_s": 0.0, "answer_s": 0.0, "recovery": "fake",
                        "context_length": length, "error": None})
    torch.save({"runs": records, "meta": {"versions": {"kvpress": "fake"}}}, job_dir / "kvpress.pt")


def test_the_whole_command_with_a_fake_kvpress_side(model, tmp_path, monkeypatch, capsys):
    tokenizer = hf_char_tokenizer()
    monkeypatch.setattr(fidelity, "_load", lambda name: (model, tokenizer, tmp_path / "tiny"))
    monkeypatch.setattr(fidelity, "run_side", _fake_side)
    argv = ["--cases", "snapkv", "knorm", "adakv_snapkv", "decoding_knorm", "--ratios", "0.5", "--lengths", "300", "400",
            "--recipe", "adakv_snapkv=adakv", "--recipe", 'decoding_knorm={"scorer": "knorm", "compress_prefill": false}',
            "--recipe", "knorm=knorm-not-registered",  # a preset that does not exist: reported, not fatal
            "--decoding-context", "100", "--target-size", "48", "--compression-interval", "8", "--decoding-steps", "16",
            "--max-new-tokens", "3", "--out", str(tmp_path / "out"), "--table", str(tmp_path / "table.rst"),
            "--kvpress-python", fidelity.sys.executable]
    assert fidelity.main(argv) == 0
    result = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    rows = {(r["case"], r["tokens"]): r for r in result["rows"]}
    assert rows[("knorm", None)]["status"] == "preset missing"
    snapkv = [r for r in result["rows"] if r["case"] == "snapkv"]
    assert len(snapkv) == 2 and all(r["status"] == "ok" for r in snapkv)
    for row in [*snapkv, *(r for r in result["rows"] if r["case"] in ("adakv_snapkv", "decoding_knorm"))]:
        kept = torch.tensor(row["kept_ours"], dtype=torch.float32)
        assert row["jaccard_mean"] == pytest.approx(float((kept / row["tokens"]).mean()), abs=1e-6)  # kvpress kept all
        assert row["identical_heads"] == "0/4" and row["answer_kvpress"] == tokenizer.decode([5, 6, 7]).strip()
    assert result["meta"]["command"].startswith("python -m kvpress_lab.benchmarks.fidelity --cases snapkv")
    printed = capsys.readouterr().out
    assert sum(line.startswith("| ") for line in printed.splitlines()) == len(result["rows"]) + 1
    assert "preset missing" in printed
    assert (tmp_path / "table.rst").read_text().count("   * - ") == len(result["rows"]) + 1


def test_the_question_fed_token_by_token_gives_the_same_answer(model):
    from transformers import DynamicCache

    from kvpress_lab.benchmarks.kvpress_side import greedy_answer

    context, question = random_prompt(1, 40), random_prompt(1, 5, seed=1)
    answers = []
    for one_call in (True, False):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=context, cache=cache)
        answers.append(greedy_answer(model, cache, question, 40, 4, [], one_call=one_call))
        assert cache.get_seq_length() == 40 + 5 + 3  # the question and the answer's fed tokens
    assert answers[0][0] == answers[1][0]
    torch.testing.assert_close(answers[0][1], answers[1][1], rtol=1e-4, atol=1e-4)


def test_kvzip_timing_with_a_fake_kvpress_side(model, tmp_path, monkeypatch, capsys):
    def fake_side(python, command, job_dir, threads):
        assert command == "kvzip-timing" and torch.load(job_dir / "timing_ids.pt").shape == (1, 96)
        (job_dir / "kvzip_timing.json").write_text(json.dumps({"kvzip_over_plain": 3.0}))

    monkeypatch.setattr(fidelity, "_load", lambda name: (model, hf_char_tokenizer(), tmp_path / "tiny"))
    monkeypatch.setattr(fidelity, "run_side", fake_side)
    argv = ["--kvzip-timing", "96", "--repeats", "1", "--timing-recipe", "snapkv",  # kvzip needs a real tokenizer
            "--out", str(tmp_path), "--kvpress-python", fidelity.sys.executable]
    assert fidelity.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kvpress_kvzip_over_plain"] == 3.0 and printed["ours_kvzip_over_plain"] > 0
    saved = json.loads((tmp_path / "kvzip_timing.json").read_text())
    assert saved["ours"]["recipe"]["preset_name"] == "snapkv" and len(saved["ours"]["seconds"]["kvzip"]) == 1
