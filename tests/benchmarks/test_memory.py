"""``bench memory``: KV bytes and entries held during prefill and decoding, per setting, on tiny models."""

from __future__ import annotations

import json

import pytest
from helpers.refuse_loading import tiny_loaded  # noqa: F401 (fixture)
from helpers.tiny_models import random_prompt, tiny_model

from kvpress_lab.benchmarks.memory import measure_setting, memory_table, settings
from kvpress_lab.cli import main

T, BUDGET, CHUNK, DECODE_BUDGET, EVERY, STEPS = 64, 16, 16, 16, 4, 24
WINDOW = 8  # snapkv's


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def rows(request):
    model = tiny_model(request.param)
    ids = random_prompt(1, T)
    chosen = settings([CHUNK], DECODE_BUDGET, EVERY)
    measured = {s[0]: measure_setting(model, ids, s, preset="snapkv", budget=BUDGET, decode_tokens=STEPS, pad_token_id=0)
                for s in chosen}
    return model, measured


def _entry_bytes(model) -> int:
    """Bytes of one cached token in one layer, keys and values, float32 (from the config: an independent path)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_key_value_heads * head_dim * 4


def test_settings_are_listed_in_order():
    assert [s[0] for s in settings([256, 512, 256], 128, 32)] == [
        "full", "oneshot", "chunked 256", "chunked 512", "decode 128", "decode-only 128"]
    assert settings()[1] == ("oneshot", {}, None)
    assert settings([], 128, 32)[-1][1] == {"decode_budget": 128, "compress_every": 32, "compress_prefill": False}


def test_full_cache_bytes_equal_the_shapes(rows):
    model, measured = rows
    full, layers = measured["full"], model.config.num_hidden_layers
    assert full["prefill_peak_kv_mib"] * 2**20 == layers * (T - 1) * _entry_bytes(model)
    assert full["final_kv_mib"] * 2**20 == layers * (T - 1 + STEPS) * _entry_bytes(model)
    assert full["prefill_max_entries"] == T - 1 and full["decode_max_entries"] == T - 1 + STEPS


def test_chunked_peak_is_at_most_one_shot_and_full(rows):
    _, measured = rows
    full, oneshot, chunked = measured["full"], measured["oneshot"], measured[f"chunked {CHUNK}"]
    assert chunked["prefill_peak_kv_mib"] <= oneshot["prefill_peak_kv_mib"] < full["prefill_peak_kv_mib"]
    assert oneshot["prefill_max_entries"] == T - 1  # one-shot: each layer first holds the whole prompt
    assert chunked["prefill_max_entries"] <= BUDGET + CHUNK + WINDOW
    assert chunked["prefill_final_kv_mib"] == pytest.approx(oneshot["prefill_final_kv_mib"])  # same budget at the end


def test_decode_budget_keeps_the_cache_bounded(rows):
    model, measured = rows
    decode, only = measured[f"decode {DECODE_BUDGET}"], measured[f"decode-only {DECODE_BUDGET}"]
    assert decode["decode_max_entries"] <= DECODE_BUDGET + EVERY  # a layer is cut when it reaches budget + N
    assert only["decode_max_entries"] == T  # the first step still attends to the whole prompt, then it is cut
    for row in (decode, only):
        assert DECODE_BUDGET <= row["final_max_entries"] < DECODE_BUDGET + EVERY
        assert row["final_kv_mib"] < measured["oneshot"]["final_kv_mib"]
    # without a decode budget the compressed cache grows by one entry per step
    assert measured["oneshot"]["decode_max_entries"] == BUDGET + STEPS
    assert measured[f"decode-only {DECODE_BUDGET}"]["prefill_peak_kv_mib"] == measured["full"]["prefill_peak_kv_mib"]


def test_table_has_one_line_per_setting(rows):
    _, measured = rows
    table = memory_table(list(measured.values()))
    assert len(table.splitlines()) == 1 + len(measured) and "decode-only 16" in table


def test_cli_writes_meta_and_one_row_per_setting(tmp_path, capsys, tiny_loaded):
    out = tmp_path / "memory.jsonl"
    status = main(["bench", "memory", "--length", "80", "--budget", "16", "--chunks", "16,32", "--decode-budget", "12",
                   "--compress-every", "4", "--decode-tokens", "6", "--in-process", "--out", str(out)])
    assert status == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["type"] == "meta" and records[0]["benchmark"] == "memory"
    assert [r["setting"] for r in records[1:]] == ["full", "oneshot", "chunked 16", "chunked 32", "decode 12", "decode-only 12"]
    assert all(r["length"] == 80 and r["decode_tokens"] == 6 for r in records[1:])
    assert "chunked 32" in capsys.readouterr().out


@pytest.mark.parametrize("argv, status, message", [
    (["--compress-every", "4"], 2, "--compress-every does nothing without --decode-budget"),
    (["--preset", "lagkv", "--chunks", "16"], 2, "--chunks with --preset lagkv"),
    (["--chunks", "0"], 2, "expected a comma-separated list of positive integers"),
    (["--decode-budget", "0"], 2, "--decode-budget must be an integer >= 1"),
    (["--preset", "adakv", "--decode-budget", "32"], 2, "decode_budget"),
])
def test_bad_memory_flags_are_one_line_errors(capsys, tiny_loaded, tmp_path, argv, status, message):
    try:
        code = main(["bench", "memory", "--in-process", "--out", str(tmp_path / "m.jsonl"), *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == status, err
    assert err.count("\n") == 1 and message in err, err
