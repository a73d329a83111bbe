"""Result files record the recipe, model, versions, plugins, seed, timestamp and device."""

from __future__ import annotations

import json
import platform

import pytest

import kvpress_lab
from kvpress_lab import Recipe
from kvpress_lab.benchmarks.results import REQUIRED_META, model_settings, read_meta, read_rows, run_metadata, write_result_file
from kvpress_lab.benchmarks.sweep import Cell, plan_cells, run_sweep


def meta():
    recipes = {"full@None": None, "pyramidkv@64": Recipe.preset("pyramidkv", budget=64)}
    return run_metadata("needle", "smollm2-135m-instruct", recipes, seed=7, device="cpu", config={"lengths": [512]})


def test_meta_has_every_required_field():
    record = meta()
    assert set(REQUIRED_META) <= set(record)
    assert record["recipes"]["full@None"] is None
    assert Recipe.from_dict(record["recipes"]["pyramidkv@64"]) == Recipe.preset("pyramidkv", budget=64)
    assert record["versions"]["python"] == platform.python_version()
    assert record["versions"]["kvpress_lab"] == kvpress_lab.__version__
    assert {"torch", "transformers"} <= set(record["versions"])
    assert record["plugins"] == kvpress_lab.get_registry().plugins() and record["plugins"]
    assert record["seed"] == 7 and record["device"] == "cpu" and "T" in record["timestamp"]
    json.dumps(record)  # JSON-ready


def test_model_settings_record_dtype_and_attention_implementation():
    import torch
    from helpers.tiny_models import tiny_model

    model = tiny_model("llama", "eager").to(torch.bfloat16)
    settings = model_settings(model)
    assert settings == {"device": "cpu", "dtype": "bfloat16", "attn_implementation": "eager"}
    record = run_metadata("speed", "tiny", {}, seed=0, **settings)
    assert (record["device"], record["dtype"], record["attn_implementation"]) == ("cpu", "bfloat16", "eager")


def test_result_file_round_trip(tmp_path):
    rows = [{"recipe": "pyramidkv", "budget": 64, "correct": True,
             "recipe_config": Recipe.preset("pyramidkv", budget=64).to_dict()}]
    path = write_result_file(tmp_path / "sub" / "r.json", meta(), rows, [{"accuracy": 1.0}])
    payload = json.loads(path.read_text())
    assert set(payload) == {"meta", "rows", "summary"}
    assert read_rows(path) == rows and read_meta(path)[0]["model"] == "smollm2-135m-instruct"
    with pytest.raises(ValueError, match="meta lacks"):
        write_result_file(tmp_path / "bad.json", {"model": "x"}, rows)


def test_sweep_file_carries_meta_and_recipe_per_row(tmp_path):
    recipe = Recipe.preset("snapkv", budget=64)
    out = tmp_path / "s.jsonl"

    def runner(cell: Cell) -> dict:
        return {"score": 1.0, "recipe_config": recipe.to_dict()}

    run_sweep(plan_cells(["snapkv"], [64], ["x"]), runner, out, meta(), progress=False)
    (record,) = read_meta(out)
    assert set(REQUIRED_META) <= set(record) and record["shard"] == "0/1"
    (row,) = read_rows(out)
    assert Recipe.from_dict(row["recipe_config"]) == recipe and row["cell"] == "snapkv|64|x"
