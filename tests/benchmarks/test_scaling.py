"""The scaling-curves benchmark end to end at one short length (the real runs, up to 32K tokens, are not for CI)."""

from __future__ import annotations

import csv
import json

import pytest

from kvpress_lab.benchmarks.scaling import SETTINGS, main


@pytest.mark.slow
def test_one_length_gives_a_row_per_setting_a_table_and_a_figure(tmp_path):
    out = tmp_path / "scaling.jsonl"
    assert main(["--lengths", "256", "--chunk", "128", "--budget", "64", "--decode-tokens", "2", "--out", str(out)]) == 0
    rows = {r["kind"]: r for r in map(json.loads, out.read_text().splitlines()) if r.get("type") == "result"}
    assert sorted(rows) == sorted(SETTINGS)
    kv = {kind: row["prefill_final_kv_mib"] for kind, row in rows.items()}
    # 30 layers x 3 KV heads x 64 dims x 2 (K, V) x 4 bytes = 46,080 bytes per token
    assert kv["full"] == pytest.approx(255 * 46080 / 2**20)  # the prompt minus the token decoding starts from
    kept = 64 * 46080 / 2**20  # budget 64 per layer and KV head; the compressed layers' bookkeeping adds a few bytes
    assert kv["oneshot"] == kv["chunked"] and kept <= kv["chunked"] < 1.01 * kept
    assert all(row["prefill_s"] > 0 and row["peak_rss_mib"] > 0 and row["step_ms_last"] > 0 for row in rows.values())
    with out.with_suffix(".csv").open() as handle:
        table = list(csv.reader(handle))
    assert [line[:2] for line in table[1:]] == [["256", "full"], ["256", "oneshot"], ["256", "chunked 128"]]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_plot_alone_refuses_a_file_without_rows(tmp_path):
    with pytest.raises(SystemExit, match="no result rows"):
        main(["--plot", "--out", str(tmp_path / "missing.jsonl")])
    assert list(tmp_path.iterdir()) == []  # no empty table, no empty figure
