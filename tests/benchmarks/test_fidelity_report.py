"""The fidelity harness's mapping, planning, comparison rows and tables (no model, no kvpress)."""

from __future__ import annotations

import pytest
import torch

from kvpress_lab import Recipe
from kvpress_lab.benchmarks.fidelity import check_kvpress_python, plan
from kvpress_lab.benchmarks.fidelity_cases import PresetMissing, build_recipe, get_case, parse_override
from kvpress_lab.benchmarks.fidelity_report import compare, markdown_table, missing_row, rst_table

DECODING = {"compression_interval": 32, "target_size": 512, "steps": 160, "context_tokens": 1000}


def _record(kept, answer=(5, 6), logits=(0.0, 1.0, 2.0), error=None, ratio=0.5):
    return {"case": "snapkv", "ratio": ratio, "prompt": "T8", "seed": 0, "kept": torch.tensor(kept),
            "answer_ids": list(answer), "first_logits": torch.tensor(logits), "prefill_s": 0.1, "answer_s": 0.2,
            "recovery": "byte match", "error": error}


def test_compare_counts_jaccard_identical_heads_and_logit_difference():
    theirs = _record([[[True, True, False, False], [True, False, True, False]]])  # (L=1, Hkv=2, T=4)
    ours = _record([[[True, True, False, False], [True, False, False, True]]], logits=(0.0, 1.5, 2.0))
    spread = _record([[[True, False, True, False], [True, False, True, False]]])
    row = compare(get_case("snapkv"), "snapkv-kvpress", theirs, ours, lambda ids: " ".join(map(str, ids)), spread)
    assert row["status"] == "ok" and row["tokens"] == 4
    assert row["jaccard_mean"] == pytest.approx((1 + 1 / 3) / 2) and row["jaccard_min"] == pytest.approx(1 / 3)
    assert row["identical_heads"] == "1/2"
    assert row["max_logit_diff"] == pytest.approx(0.5)
    assert row["answer_kvpress"] == row["answer_ours"] == "5 6" and row["same_answer_ids"]
    assert row["kvpress_spread"] == pytest.approx((1 / 3 + 1) / 2)
    assert row["kept_kvpress"] == [[2, 2]]


def test_compare_reports_an_error_of_either_side():
    ok = _record([[[True, False]]])
    row = compare(get_case("snapkv"), "snapkv-kvpress", ok, _record([[[True]]], error="RecoveryError: layer 0"), str)
    assert row["status"] == "error: ours: RecoveryError: layer 0" and row["jaccard_mean"] is None


def test_tables_escape_what_their_markup_would_read():
    rows = [missing_row(get_case("knorm"), "knorm-kvpress", None, "preset missing"),
            {**missing_row(get_case("snapkv"), "snapkv-kvpress", 0.5, "ok"), "tokens": 9, "jaccard_mean": 1.0,
             "jaccard_min": 0.5, "identical_heads": "1/2", "answer_kvpress": "1. a|b *c*\nd_", "answer_ours": "",
             "max_logit_diff": 0.25}]
    markdown = markdown_table(rows).splitlines()
    assert len(markdown) == 4 and markdown[0].count(" | ") == 10  # "max |logit diff|" escaped in the header
    assert "preset missing" in markdown[2] and "1. a\\|b *c*⏎d_" in markdown[3]
    docutils_core = pytest.importorskip("docutils.core")
    rst = rst_table(rows)
    html = docutils_core.publish_string(rst, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})
    text = html.decode()
    assert "1. a|b *c* ⏎ d_" in text and "<ol" not in text and "<em>" not in text  # shown literally
    assert text.count("<tr>") == 3 and "preset missing" in text


def test_override_parsing_and_recipe_building():
    assert parse_override("streaming_llm=streamingllm") == ("streaming_llm", "streamingllm")
    with pytest.raises(ValueError, match="Unknown fidelity case 'nope'"):
        parse_override("nope=snapkv")
    with pytest.raises(ValueError, match="CASE=PRESET or CASE=JSON"):
        parse_override("knorm")
    with pytest.raises(ValueError, match="does not parse"):
        parse_override("knorm={scorer}")
    assert build_recipe(get_case("snapkv"), 0.25) == Recipe.preset("snapkv-kvpress", compression_ratio=0.25)
    assert build_recipe(get_case("knorm"), 0.5, {"scorer": "knorm"}) == Recipe(scorer="knorm", compression_ratio=0.5)
    assert build_recipe(get_case("tova"), 0.5, {"preset": "snapkv", "window": 4}).window == 4
    assert build_recipe(get_case("random"), 0.5, "snapkv") == Recipe.preset("snapkv", compression_ratio=0.5)
    decoding = build_recipe(get_case("decoding_knorm"), None, {"scorer": "knorm", "compress_prefill": False}, DECODING)
    assert (decoding.decode_budget, decoding.compress_every, decoding.compression_ratio) == (512, 32, None)
    with pytest.raises(PresetMissing, match="'no-such-preset'"):
        build_recipe(get_case("knorm"), 0.5, "no-such-preset")


def test_plan_skips_missing_presets_and_draws_kvpress_twice_for_sketches():
    overrides = {"leverage": {"scorer": "leverage"}, "knorm": "no-such-preset"}
    recipes, kvpress_runs, our_runs, missing = plan(["snapkv", "knorm", "leverage"], [0.25, 0.5], overrides,
                                                    ["T1", "T2"], 3, DECODING)
    assert set(recipes) == {("snapkv", 0.25), ("snapkv", 0.5), ("leverage", 0.25), ("leverage", 0.5)}
    assert [(r["case"], r["status"]) for r in missing] == [("knorm", "preset missing")]  # one row, not one per ratio
    assert len(our_runs) == 8 and len(kvpress_runs) == 12
    assert {r["seed"] for r in kvpress_runs if r["case"] == "leverage"} == {3, 4}
    assert recipes[("leverage", 0.5)][1] == '{"scorer":"leverage"}'


def test_a_missing_side_environment_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="bash scripts/kvpress_env.sh"):
        check_kvpress_python(tmp_path / "bin" / "python")


@pytest.mark.parametrize("name", ["kvpress_side", "fidelity_cases", "fidelity_prompts", "fidelity_report"])
def test_docstring_examples(name):
    import doctest
    import importlib

    module = importlib.import_module(f"kvpress_lab.benchmarks.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
