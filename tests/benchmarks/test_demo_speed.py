"""The demo wall-time benchmark runs both settings on one model and checks that their answers agree."""

from __future__ import annotations

from kvpress_lab.benchmarks.demo_speed import measure


def test_measure_interleaves_both_settings_and_compares_answers(tiny_llama, char_tokenizer):
    result = measure(2, model=tiny_llama, tokenizer=char_tokenizer, lengths=(160,), depths=(0.5,), budgets=(24,),
                     recipes=("snapkv", "h2o"))
    assert result["cells"] == 3  # full, snapkv, h2o
    assert [len(v) for v in result["seconds"].values()] == [2, 2]
    assert result["same_answers"] is True
    assert result["shared_over_alone"] == result["median_s"]["shared"] / result["median_s"]["alone"]
