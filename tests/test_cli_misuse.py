"""Misusing ``kvpress-lab``: every user mistake is one line on stderr, with the right exit status.

Exit status 2: the command line itself is wrong (a flag value that does not parse, flags that
conflict or do nothing together). Exit status 1: the values parse but cannot work here (a
missing model folder, an unavailable device, an output path under a regular file, a prompt
length below the benchmark's fixed parts). Both are checked before the model loads wherever the
check does not need the tokenizer; the model loader is replaced by one that raises
:class:`ModelLoaded`, so a check that comes too late fails the test instead of loading weights.

The run-recipe policy checked here: ``--preset NAME`` (or the default preset) is the base, and
``--scorer``, ``--executor``, ``--window``, ``--budget`` and ``--ratio`` are applied on top of
it; each one that changes a field the preset sets is printed (``overriding preset snapkv:
scorer=h2o ...``). ``--allocator`` selects a recipe built from scratch instead of a preset, so it
excludes ``--preset``. ``--full`` runs no recipe, so any recipe flag with it is a usage error.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from helpers.cli_errors import one_line_error, status_of
from helpers.refuse_loading import ModelLoaded, refuse_loading, tiny_loaded  # noqa: F401 (fixtures)

import kvpress_lab.models
from kvpress_lab.benchmarks import commands
from kvpress_lab.benchmarks.generation import GenerationResult
from kvpress_lab import Recipe
from kvpress_lab.cli import main

REAL_LOAD = commands.load




@pytest.fixture
def recipes_run(monkeypatch, tiny_loaded):
    """``kvpress-lab run`` with a stand-in generation: returns the list of recipes it ran."""
    seen = []

    def generate(model, tokenizer, recipe, prompt, question, **options):
        seen.append(recipe)
        return GenerationResult("12345", prompt_tokens=5, prefill_s=0.01, question_s=0.0, decode_step_s=0.01,
                                kv_bytes=100, new_tokens=1)

    monkeypatch.setattr("kvpress_lab.benchmarks.generation.generate_answer", generate)
    return seen


@pytest.fixture
def regular_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "regular"
    path.write_text("not a folder\n")
    return path


# ---------------------------------------------------------------------------------------------
# run: flags that conflict or do nothing, and preset overrides
# ---------------------------------------------------------------------------------------------

RECIPE_FLAGS = [("--scorer", "h2o"), ("--executor", "ragged"), ("--window", "4"), ("--budget", "16"), ("--ratio", "0.5")]


@pytest.mark.parametrize("flag, value", RECIPE_FLAGS)
def test_recipe_flags_with_full_are_usage_errors(capsys, flag, value):
    err = one_line_error(capsys, ["run", "hi", "--full", flag, value], 2)
    assert "--full" in err and flag in err and "drop" in err


def test_every_conflicting_recipe_flag_is_named(capsys):
    err = one_line_error(capsys, ["run", "hi", "--full", "--budget", "16", "--window", "4"], 2)
    assert "--budget" in err and "--window" in err


@pytest.mark.parametrize("argv, changed, printed", [
    (["--preset", "snapkv", "--scorer", "h2o"], {"scorer": "h2o", "scorer_kwargs": {}, "allocator": "uniform"},
     ["overriding preset snapkv: scorer=h2o", "scorer_kwargs"]),
    (["--preset", "pyramidkv", "--window", "16", "--executor", "ragged"],
     {"window": 16, "executor": "ragged", "allocator": "pyramid", "allocator_kwargs": {"beta": 20, "rounding": "conserve"}},
     ["overriding preset pyramidkv:", "window=16", "executor=ragged"]),
    (["--window", "4"], {"window": 4, "allocator": "pyramid", "preset_name": "pyramidkv"},
     ["overriding preset pyramidkv: window=4"]),
    (["--preset", "streamingllm", "--scorer", "sink"], {"scorer": "sink", "scorer_kwargs": {"num_sinks": 4}},
     ["overriding preset streamingllm: scorer=sink"]),
])
def test_preset_overrides_are_applied_and_printed(capsys, recipes_run, argv, changed, printed):
    assert main(["run", "hi", *argv, "--max-new-tokens", "1"]) == 0
    (recipe,) = recipes_run
    assert {key: recipe.to_dict()[key] for key in changed} == changed
    err = capsys.readouterr().err
    for text in printed:
        assert text in err


@pytest.mark.parametrize("argv, overrides", [
    (["--preset", "snapkv", "--scorer", "h2o"], {"scorer": "h2o"}),
    (["--preset", "pyramidkv", "--window", "16", "--executor", "ragged", "--ratio", "0.5"],
     {"window": 16, "executor": "ragged", "compression_ratio": 0.5}),
    (["--preset", "streamingllm", "--scorer", "sink", "--budget", "64"], {"scorer": "sink", "budget": 64}),
])
def test_preset_overrides_are_the_recipes_own_rule(capsys, recipes_run, argv, overrides):
    """``kvpress-lab run --preset P --flag v`` runs exactly ``Recipe.preset(P, field=v)``, and prints its changes."""
    assert main(["run", "hi", *argv, "--max-new-tokens", "1"]) == 0
    (recipe,) = recipes_run
    name = argv[1]
    assert recipe == Recipe.preset(name, **overrides)
    changes = Recipe.preset_changes(name, **overrides)
    err = capsys.readouterr().err
    assert all(change in err for change in changes) and ("overriding" in err) == bool(changes)


@pytest.mark.parametrize("argv, changed", [
    (["--preset", "snapkv", "--budget", "64"], {"budget": 64, "scorer": "snapkv_window"}),
    (["--preset", "snapkv", "--ratio", "0.5"], {"budget": None, "compression_ratio": 0.5}),
    (["--allocator", "pyramid", "--scorer", "h2o", "--window", "4", "--executor", "ragged"],
     {"allocator": "pyramid", "scorer": "h2o", "window": 4, "executor": "ragged", "preset_name": None}),
    (["--scorer", "h2o"], {"allocator": "uniform", "scorer": "h2o", "preset_name": None}),
])
def test_sizes_and_scratch_recipes_are_not_overrides(capsys, recipes_run, argv, changed):
    assert main(["run", "hi", *argv, "--max-new-tokens", "1"]) == 0
    (recipe,) = recipes_run
    assert {key: recipe.to_dict()[key] for key in changed} == changed
    assert "overriding" not in capsys.readouterr().err


def test_full_runs_without_a_recipe(recipes_run):
    assert main(["run", "hi", "--full", "--max-new-tokens", "1"]) == 0
    assert recipes_run == [None]


def test_an_incompatible_override_is_a_one_line_error(capsys):
    err = one_line_error(capsys, ["run", "hi", "--preset", "adakv", "--executor", "gather"], 2)
    assert "gather" in err and "per_head_budgets" in err


def test_preset_and_allocator_exclude_each_other(capsys):
    err = one_line_error(capsys, ["run", "hi", "--preset", "snapkv", "--allocator", "pyramid"], 2)
    assert "--allocator" in err and "--preset" in err


def test_prompt_text_and_prompt_file_conflict(capsys, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("some text")
    err = one_line_error(capsys, ["run", "hi", "--prompt-file", str(prompt)], 2)
    assert "--prompt-file" in err and "prompt" in err


def test_query_agnostic_needs_a_question_before_loading(capsys):
    err = one_line_error(capsys, ["run", "hi", "--mode", "query-agnostic"], 2)
    assert "--mode query-agnostic" in err and "--question" in err


def test_chat_and_query_agnostic_conflict(capsys):
    err = one_line_error(capsys, ["run", "hi", "--question", "q?", "--chat", "--mode", "query-agnostic"], 2)
    assert "--chat" in err and "--mode query-agnostic" in err


@pytest.mark.parametrize("argv", [["run", "hi", "--seed", "1"], ["bench", "longbench", "--data-dir", ".", "--seed", "1"]])
def test_seed_is_not_offered_where_nothing_is_generated(capsys, argv):
    err = one_line_error(capsys, argv, 2)
    assert "unrecognized arguments: --seed 1" in err


# ---------------------------------------------------------------------------------------------
# bench, demo, calibrate: flags that do nothing in that mode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["bench", "needle", "--recipes", "full", "--budgets", "64"], "--budgets"),
    (["bench", "ruler", "--recipes", "full", "--window", "4"], "--window"),
    (["bench", "longbench", "--data-dir", ".", "--recipes", "full", "--budgets", "64"], "--budgets"),
    (["bench", "speed", "--recipes", "full", "--budgets", "32"], "--budgets"),
    (["bench", "speed", "--recipes", "full", "--window", "4"], "--window"),
    (["demo", "--recipes", "full", "--budgets", "64"], "--budgets"),
])
def test_compression_flags_without_a_compression_recipe(capsys, argv, flag):
    err = one_line_error(capsys, argv, 2)
    assert flag in err and "--recipes" in err


def test_budgets_and_window_with_a_compression_recipe_reach_the_loader():
    with pytest.raises(ModelLoaded):
        main(["bench", "needle", "--recipes", "full,snapkv", "--budgets", "64", "--window", "4"])
    with pytest.raises(ModelLoaded):
        main(["bench", "needle", "--recipes", "full"])  # default budgets are not "given"


def test_calibrate_seed_with_a_prompts_file(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n\ntwo\n")
    err = one_line_error(capsys, ["calibrate", "--prompts-file", str(prompts), "--seed", "3",
                                  "--out", str(tmp_path / "p.json")], 2)
    assert "--seed" in err and "--prompts-file" in err


# ---------------------------------------------------------------------------------------------
# Flag values that do not parse (12c): the message names the flag and the rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["run", "hi", "--budget", "-5"], "--budget must be an integer >= 1, got -5"),
    (["run", "hi", "--budget", "abc"], "--budget must be an integer >= 1, got abc"),
    (["run", "hi", "--window", "0"], "--window must be an integer >= 1, got 0"),
    (["run", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    (["run", "hi", "--ratio", "1.5"], "--ratio must be a number in [0, 1), got 1.5"),
    (["run", "hi", "--ratio", "half"], "--ratio must be a number in [0, 1), got half"),
    (["bench", "needle", "--window", "0"], "--window must be an integer >= 1, got 0"),
    (["bench", "needle", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    (["bench", "needle", "--seed", "x"], "--seed must be an integer, got x"),
    (["bench", "ruler", "--samples", "0"], "--samples must be an integer >= 1, got 0"),
    (["bench", "longbench", "--limit", "0"], "--limit must be an integer >= 1, got 0"),
    (["bench", "longbench", "--max-length", "1"], "--max-length must be an integer >= 2, got 1"),
    (["bench", "speed", "--repeats", "0"], "--repeats must be an integer >= 1, got 0"),
    (["bench", "speed", "--decode-steps", "-1"], "--decode-steps must be an integer >= 1, got -1"),
    (["demo", "--seed", "1.5"], "--seed must be an integer, got 1.5"),
    (["bench", "ruler", "--shard", "3/3"], "--shard i/n needs n >= 1 and 0 <= i < n, got '3/3'"),
])
def test_bad_flag_values_name_the_flag_and_the_rule(capsys, argv, message):
    err = one_line_error(capsys, argv, 2)
    assert message in err
    assert "invalid _" not in err and "value:" not in err  # no function names, no "invalid X value"
    flag = message.split()[0]
    assert f"argument {flag}: {flag}" not in err  # the flag is named once


# ---------------------------------------------------------------------------------------------
# --device, --dtype, --attn
# ---------------------------------------------------------------------------------------------

MODEL_COMMANDS = [["run", "hi"], ["bench", "needle"], ["bench", "speed"], ["demo"]]


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, ["calibrate", "--out", "p.json"]])
@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "meta", "cuda:-1", ""])
def test_device_strings_that_do_not_parse(capsys, command, device):
    err = one_line_error(capsys, [*command, "--device", device], 2)
    assert "--device" in err and "cpu" in err


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, ["calibrate", "--out", "p.json"]])
def test_cuda_without_cuda_fails_before_loading(capsys, no_cuda, command):
    err = one_line_error(capsys, [*command, "--device", "cuda"], 2)
    assert "--device cuda" in err and "CUDA is not available" in err


def test_a_cuda_index_beyond_the_visible_devices(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = one_line_error(capsys, ["run", "hi", "--device", "cuda:1"], 2)
    assert "--device cuda:1" in err and "1 CUDA device" in err


def test_mps_without_mps(capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    err = one_line_error(capsys, ["demo", "--device", "mps"], 2)
    assert "--device mps" in err and "not available" in err


def test_available_devices_reach_the_loader(monkeypatch):
    for device in ("cpu", "auto"):
        with pytest.raises(ModelLoaded):
            main(["run", "hi", "--device", device])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ModelLoaded):
        main(["run", "hi", "--device", "cuda:1"])


def test_flash_attention_needs_a_cuda_device(capsys, no_cuda):
    for argv in (["run", "hi", "--attn", "flash_attention_2", "--device", "cpu"],
                 ["bench", "needle", "--attn", "flash_attention_2"]):  # auto resolves to cpu here
        err = one_line_error(capsys, argv, 2)
        assert "--attn flash_attention_2" in err and "CUDA" in err


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("dtype", ["float8", "int8", "fp16", "float64", "torch.float32"])
def test_dtypes_outside_the_allowed_list(capsys, command, dtype):
    err = one_line_error(capsys, [*command, "--dtype", dtype], 2)
    assert "--dtype" in err and "float32" in err and "bfloat16" in err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_allowed_dtypes_reach_the_loader(dtype):
    with pytest.raises(ModelLoaded):
        main(["run", "hi", "--dtype", dtype])


# ---------------------------------------------------------------------------------------------
# --model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["missing-relative", "missing-home", "missing-absolute", "a-file", "no-config"])
def bad_model_path(request, tmp_path, regular_file, monkeypatch) -> tuple[str, str]:
    """``(--model value, expected words)`` for a path that is not a checkpoint folder."""
    monkeypatch.chdir(tmp_path)
    if request.param == "missing-relative":
        return "./no-such-dir", "does not exist"
    if request.param == "missing-home":
        monkeypatch.setenv("HOME", str(tmp_path))
        return "~/no-such-dir", "does not exist"
    if request.param == "missing-absolute":
        return str(tmp_path / "models" / "nope"), "does not exist"
    if request.param == "a-file":
        return str(regular_file), "not a GGUF file"
    empty = tmp_path / "empty"
    empty.mkdir()
    return str(empty), "config.json"


@pytest.mark.parametrize("command", [*MODEL_COMMANDS, ["calibrate", "--out", "p.json"]])
def test_model_paths_are_checked_before_loading(capsys, bad_model_path, command):
    value, words = bad_model_path
    err = one_line_error(capsys, [*command, "--model", value], 2)
    assert f"--model {value}" in err and words in err


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "embedded", "Qwen/Qwen3-0.6B"])
def test_names_and_hub_ids_reach_the_loader(name):
    with pytest.raises(ModelLoaded):
        main(["run", "hi", "--model", name])


def test_loader_errors_are_one_line(capsys, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(commands, "load", REAL_LOAD)
    monkeypatch.setattr(kvpress_lab.models, "load_model", unreachable)
    assert main(["run", "hi", "--model", "org/name"]) == 2
    progress, error = capsys.readouterr().err.splitlines()  # the loader's progress line, then the error
    assert progress.startswith("Loading org/name") and "Traceback" not in error
    assert error.startswith("kvpress-lab run: error: cannot load --model org/name: We couldn't connect")
    assert error.endswith("Check your connection.")


# ---------------------------------------------------------------------------------------------
# Input files that are not what the flag needs
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def binary_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "binary.bin"
    path.write_bytes(b"\x7fELF\xf0\x28\x8c\x28")
    return path


def test_a_prompt_file_that_is_not_text(capsys, binary_file):
    err = one_line_error(capsys, ["run", "--prompt-file", str(binary_file)], 2)
    assert "--prompt-file" in err and "UTF-8" in err


def test_calibrate_prompts_file_that_is_not_text(capsys, binary_file, tmp_path):
    err = one_line_error(capsys, ["calibrate", "--prompts-file", str(binary_file), "--out", str(tmp_path / "p.json")], 2)
    assert "--prompts-file" in err and "utf-8" in err


@pytest.mark.parametrize("name, content", [("list.json", "[]"), ("lines.jsonl", "[1, 2]\n"), ("binary.json", None)])
def test_plot_files_that_are_not_result_files(capsys, tmp_path, binary_file, name, content):
    path = binary_file if content is None else tmp_path / name
    if content is not None:
        path.write_text(content)
    err = one_line_error(capsys, ["plot", str(path)], 2)
    assert f"{path} is not a kvpress_lab result file" in err and err.count(str(path)) == 1


# ---------------------------------------------------------------------------------------------
# Output paths
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def needle_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "needle.json"
    rows = [{"recipe": "full", "budget": None, "length": 128, "depth": d, "correct": True} for d in (0.0, 1.0)]
    path.write_text(json.dumps({"meta": {}, "rows": rows}))
    return path


@pytest.mark.parametrize("flag_for", [
    lambda out, f: ["bench", "needle", "--out", out],
    lambda out, f: ["bench", "ruler", "--out", out],
    lambda out, f: ["bench", "speed", "--out", out],
    lambda out, f: ["demo", "--out-dir", out],
    lambda out, f: ["plot", str(f), "--out", out],
    lambda out, f: ["calibrate", "--out", out],
], ids=["needle", "ruler", "speed", "demo", "plot", "calibrate"])
def test_outputs_under_a_regular_file(capsys, regular_file, needle_file, flag_for):
    out = str(regular_file / "sub" / "x.jsonl")
    err = one_line_error(capsys, flag_for(out, needle_file), 2)
    assert str(regular_file) in err and "not a folder" in err
    assert regular_file.read_text() == "not a folder\n"


@pytest.mark.parametrize("argv", [["bench", "needle", "--out"], ["bench", "speed", "--out"], ["calibrate", "--out"]])
def test_an_output_file_that_is_a_folder(capsys, tmp_path, argv):
    err = one_line_error(capsys, [*argv, str(tmp_path)], 2)
    assert str(tmp_path) in err and "is a folder" in err


def test_demo_out_dir_that_is_a_file(capsys, regular_file):
    err = one_line_error(capsys, ["demo", "--out-dir", str(regular_file)], 2)
    assert str(regular_file) in err and "not a folder" in err


def test_a_sweep_file_of_another_model_is_refused_before_loading(capsys, tmp_path):
    out = tmp_path / "needle.jsonl"
    out.write_text(json.dumps({"type": "meta", "benchmark": "needle", "model": "other-model"}) + "\n")
    err = one_line_error(capsys, ["bench", "needle", "--out", str(out)], 2)
    assert "model='other-model'" in err and "--out" in err


# ---------------------------------------------------------------------------------------------
# Prompt lengths below the benchmark's fixed parts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, minimum", [
    (["bench", "needle", "--lengths", "32"], 64),
    (["bench", "needle", "--lengths", "1024,63"], 64),
    (["demo", "--lengths", "32"], 64),
    (["bench", "ruler", "--lengths", "16"], 32),
])
def test_lengths_below_the_fixed_minimum_fail_before_loading(capsys, tmp_path, argv, minimum):
    out = tmp_path / "results" / "out.jsonl"
    argv = [*argv, "--out-dir", str(out.parent)] if argv[0] == "demo" else [*argv, "--out", str(out)]
    err = one_line_error(capsys, argv, 2)
    assert "--lengths" in err and f">= {minimum}" in err
    assert not out.parent.exists()  # nothing written, not even the folder


def test_needle_lengths_too_short_for_the_tokenizer(capsys, tmp_path, tiny_loaded):
    from kvpress_lab.benchmarks.needle import QUESTION

    out = tmp_path / "results" / "needle.jsonl"
    err = one_line_error(capsys, ["bench", "needle", "--lengths", "80,512", "--depths", "0.5", "--recipes", "full",
                                  "--out", str(out), "--no-progress"], 2)
    assert "--lengths 80" in err and "needle prompt" in err
    minimum = int(err.split(">= ")[-1].split()[0].rstrip(".;,"))
    assert minimum > len(QUESTION)  # question and needle, in tokens of the character tokenizer
    assert not out.exists() and not out.parent.exists()  # no stray metadata line


def test_demo_lengths_too_short_for_the_tokenizer(capsys, tmp_path, tiny_loaded):
    out = tmp_path / "demo"
    err = one_line_error(capsys, ["demo", "--lengths", "80", "--depths", "0.5", "--recipes", "snapkv",
                                  "--budgets", "16", "--out-dir", str(out), "--no-progress"], 2)
    assert "--lengths 80" in err and "needle prompt" in err
    assert not out.exists()


def test_speed_lengths_too_short_for_the_tokenizer(capsys, tmp_path, tiny_loaded):
    out = tmp_path / "speed.json"
    err = one_line_error(capsys, ["bench", "speed", "--lengths", "20", "--recipes", "full", "--out", str(out),
                                  "--no-progress"], 2)
    assert "--lengths 20" in err and ">= " in err
    assert not out.exists()


def test_a_long_enough_needle_sweep_still_runs(capsys, tmp_path, tiny_loaded):
    out = tmp_path / "needle.jsonl"
    assert main(["bench", "needle", "--lengths", "128", "--depths", "0.5", "--recipes", "full", "--out", str(out),
                 "--no-progress", "--max-new-tokens", "1"]) == 0
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == ["meta", "result"]


def test_a_sweep_whose_first_cell_fails_writes_nothing(tmp_path):
    from kvpress_lab.benchmarks.sweep import plan_cells, run_sweep

    def broken(cell):
        raise ValueError("a bug in the runner")

    out = tmp_path / "new" / "sweep.jsonl"
    with pytest.raises(ValueError, match="a bug"):
        run_sweep(plan_cells(["full"], [], ["a", "b"]), broken, out, {"benchmark": "b", "model": "m"}, progress=False)
    assert not out.exists() and not out.parent.exists()


# ---------------------------------------------------------------------------------------------
# Documented commands still pass every check; the installed script prints one line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["demo"],
    ["run", "--prompt-file", "{doc}", "--preset", "pyramidkv", "--budget", "128"],
    ["run", "--prompt-file", "{doc}", "--question", "Who signed it?", "--preset", "snapkv", "--budget", "128",
     "--mode", "query-agnostic"],
    ["bench", "needle", "--lengths", "1024,2048", "--budgets", "64,128", "--shard", "0/2"],
    ["bench", "needle", "--lengths", "1024,2048,4096", "--depths", "0,0.25,0.5,0.75,1", "--budgets", "64,128,256"],
    ["bench", "ruler", "--tasks", "niah_multikey,variable_tracking", "--lengths", "4096", "--samples", "20"],
    ["bench", "speed", "--lengths", "2048,4096", "--recipes", "full,pyramidkv,snapkv", "--budgets", "128",
     "--repeats", "3"],
])
def test_documented_commands_reach_the_loader(tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "doc.txt").write_text("A short document, signed by Ada.")
    with pytest.raises(ModelLoaded):
        main([a.format(doc="doc.txt") for a in argv])
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv, status", [
    (["run", "hi", "--budget", "-5"], 2),
    (["run", "hi", "--device", "gpu0"], 2),
    (["run", "hi", "--model", "./no-such-dir"], 2),
])
def test_console_script_prints_one_line_without_traceback(tmp_path, argv, status):
    script = pathlib.Path(sys.executable).with_name("kvpress-lab")
    result = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120, check=False,
                            cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == status, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("kvpress-lab run: error: ")
