"""``kvpress-lab eval CONFIG.yaml``: the configuration's checks, defaults and flag table (no model loads)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from kvpress_lab.benchmarks.eval_config import FLAG_KEYS, parse_config, read_config
from kvpress_lab.benchmarks.evaluate import plan_eval_cells, plan_recipes
from kvpress_lab.benchmarks.input_errors import BenchmarkInputError
from kvpress_lab.recipe_labels import CacheSize

BASE = {"output": "out", "recipes": ["full", "snapkv"], "sizes": {"budgets": [64]},
        "tasks": [{"kind": "ruler", "tasks": ["niah_single"], "lengths": [256], "samples": 2}]}


def config(**changes):
    return parse_config({**BASE, **changes})


def test_defaults_are_filled_in_and_the_resolved_config_reads_back_the_same():
    parsed = config(recipes=["full", "snapkv", {"preset": "h2o", "ratios": [0.25, 0.5], "window": 4},
                             {"label": "mine", "allocator": "pyramid", "scorer": "snapkv_window",
                              "scorer_kwargs": {"kernel_size": 5}}, "kvzip-threshold"])
    assert parsed.model.name == "smollm2-135m-instruct" and parsed.share_prefill == 8 and parsed.progress
    assert [(r.label, r.sizes) for r in parsed.recipes] == [
        ("full", (None,)), ("snapkv", (64,)), ("h2o", ("r0.25", "r0.5")), ("mine", (64,)), ("kvzip-threshold", (None,))]
    assert parsed.tasks[0].modes == ("query-aware",)
    again = parse_config(yaml.safe_load(yaml.safe_dump(parsed.resolved())))
    assert again == parsed


def test_recipes_carry_every_field_into_the_built_recipe():
    parsed = config(recipes=[{"preset": "snapkv", "label": "k5", "window": 16, "scorer_kwargs": {"kernel_size": 5},
                              "executor": "ragged", "budgets": [96]}],
                    recipe_defaults={"decode_budget": 200, "compress_every": 8})
    recipe = plan_recipes(parsed)[("k5", CacheSize(budget=96))]
    assert (recipe.window, recipe.scorer_kwargs["kernel_size"], recipe.executor, recipe.budget) == (16, 5, "ragged", 96)
    assert (recipe.decode_budget, recipe.compress_every, recipe.preset_name) == (200, 8, "snapkv")


@pytest.mark.parametrize(("changes", "message"), [
    ({"colour": "red"}, "unknown key"),
    ({"modes": ["query-blind"]}, "modes among"),
    ({"recipes": ["full", "snapkv", "snapkv"]}, "labels must be unique"),
    ({"recipes": [{"label": "full", "window": 4}]}, "takes no preset"),
    ({"recipes": [{"allocator": "pyramid"}]}, "needs a label"),
    ({"recipes": [{"label": "x", "widow": 4, "preset": "snapkv"}]}, "unknown key.*widow"),
    ({"sizes": {}}, "no size"),
    ({"sizes": {"ratios": [1.5]}}, r"ratios in \[0, 1\)"),
    ({"prefill_chunk": 256, "share_prefill": 4}, "drop one of them"),
    ({"tasks": [{"kind": "haystack"}]}, "expected one of lm_eval"),
    ({"tasks": [{"kind": "needle", "depths": [2]}]}, r"depths in \[0, 1\]"),
    ({"tasks": [{"kind": "prompt", "prompt": "x", "modes": ["query-agnostic"]}]}, "needs a question"),
    ({"tasks": [{"kind": "ruler", "tasks": ["niah_single"], "recipes": ["snap"]}]}, "no recipe is labelled snap"),
    ({"tasks": [{"kind": "longbench"}]}, "data_dir"),
    ({"output": None}, "folder the results go to"),
    ({"model": {"dtype": "int3"}}, "model.dtype"),
    ({"launcher": {"kind": "pbs"}}, "slurm or local"),
])
def test_what_cannot_work_is_refused_naming_the_key(changes, message):
    with pytest.raises(BenchmarkInputError, match=message):
        config(**changes)


def test_read_config_names_the_file_on_errors(tmp_path):
    with pytest.raises(BenchmarkInputError, match="does not exist"):
        read_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipes: [full\n")
    with pytest.raises(BenchmarkInputError, match="not valid YAML"):
        read_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert read_config(good).recipes[1].label == "snapkv"


def test_a_task_runs_only_its_recipes_and_sizes():
    parsed = config(recipes=["full", "snapkv", "h2o"], sizes={"budgets": [64], "ratios": [0.5]},
                    tasks=[{"kind": "ruler", "tasks": ["niah_single"], "lengths": [256], "samples": 1,
                            "recipes": ["full", "snapkv"], "sizes": {"ratios": [0.5]}}])
    task = parsed.tasks[0]
    samples = {"query-aware|ruler:niah_single|L=256|s=0": ("query-aware", "ruler", (("niah_single", 256, 0), task))}
    assert [(c.recipe, c.size.value) for c in plan_eval_cells(parsed, samples)] == [("full", None), ("snapkv", "r0.5")]


def _options(parser: argparse.ArgumentParser) -> set[str]:
    names = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _options(sub)
        elif action.option_strings:
            names |= {o for o in action.option_strings if o.startswith("--") and o not in ("--help", "--version")}
        elif action.dest not in ("command", "task"):
            names.add(action.dest)
    return names


def test_every_run_and_bench_flag_has_a_config_key():
    from kvpress_lab.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    flags = _options(commands["run"]) | _options(commands["bench"])
    assert flags - set(FLAG_KEYS) == set()
    assert set(FLAG_KEYS) - flags == set()  # no stale entry


def test_the_howto_lists_every_flag():
    from pathlib import Path

    page = (Path(__file__).parents[2] / "docs" / "howto" / "evaluate-config.rst").read_text()
    missing = [flag for flag in FLAG_KEYS if f"``{flag}``" not in page]
    assert not missing


def test_two_task_entries_sharing_samples_run_either_entrys_cells_once():
    from kvpress_lab.benchmarks.evaluate import plan_samples

    task = {"kind": "ruler", "tasks": ["niah_single"], "lengths": [256], "samples": 2}
    parsed = config(recipes=["full", "snapkv", "h2o"],
                    tasks=[{**task, "recipes": ["full"]}, {**task, "samples": 1, "recipes": ["snapkv"]}])
    samples = plan_samples(parsed)
    assert len(samples) == 2
    cells = [(c.recipe, c.sample.rsplit("|", 1)[1]) for c in plan_eval_cells(parsed, samples)]
    assert cells == [("full", "s=0"), ("full", "s=1"), ("snapkv", "s=0")]  # h2o: no entry asks for it
    clash = config(tasks=[task, {**task, "max_new_tokens": 3}])
    with pytest.raises(BenchmarkInputError, match="different prompts or settings"):
        plan_samples(clash)
