"""``kvpress-lab run|bench|demo|plot``: flag errors are clear and caught before any model loads; plot works."""

from __future__ import annotations

import json

import pytest

from kvpress_lab.benchmarks import commands
from kvpress_lab.cli import COMMANDS, build_parser, main


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    def refuse(args):
        raise AssertionError("a bad command line must fail before the model loads")

    monkeypatch.setattr(commands, "load", refuse)
    import kvpress_lab.benchmarks.bench as bench

    monkeypatch.setattr(bench, "load", refuse)


def test_subcommands_are_registered():
    assert {"list", "run", "bench", "demo", "plot"} <= set(COMMANDS)
    args = build_parser().parse_args(["bench", "needle", "--lengths", "512,1024", "--depths", "0,0.5", "--shard", "1/2"])
    assert (args.task, args.lengths, args.depths, args.shard) == ("needle", [512, 1024], [0.0, 0.5], (1, 2))
    assert args.model == "smollm2-135m-instruct" and args.recipes[0] == "full"


@pytest.mark.parametrize("argv, message", [
    (["bench", "needle", "--budgets", "64,abc"], "comma-separated list of positive integers"),
    (["bench", "needle", "--depths", "0.5,2"], "depths in [0, 1]"),
    (["bench", "speed", "--lengths", "0"], "positive integers"),
    (["demo", "--budgets", ""], "comma-separated list"),
    (["run", "hi", "--budget", "64", "--ratio", "0.5"], "not allowed with argument"),
    (["run", "hi", "--preset", "snapkv", "--allocator", "pyramid"], "not allowed with argument"),
    (["bench", "nope"], "invalid choice"),
    (["bench", "ruler", "--shard", "3/3"], "0 <= i < n, got '3/3'"),
])
def test_usage_errors_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["demo", "--recipes", "snapkvv"], "Did you mean 'snapkv'"),
    (["demo", "--budgets", "4"], "budget"),
    (["bench", "needle", "--recipes", "full,pyramidkv", "--budgets", "2"], "recipe 'pyramidkv' with budget 2"),
    (["bench", "longbench"], "--data-dir"),
    (["bench", "ruler", "--tasks", "niah"], "unknown RULER task(s) ['niah']"),
    (["run", "hello", "--preset", "nope"], "Unknown preset 'nope'"),
    (["run", "hello", "--budget", "2"], "budget"),
    (["run", "--prompt-file", "/nonexistent/prompt.txt"], "does not exist"),
    (["plot", "/nonexistent.json"], "does not exist"),
])
def test_bad_values_fail_with_one_line_before_loading(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvpress-lab {argv[0]}: error:") and message in err


def test_longbench_data_dir_without_files_is_reported(tmp_path, capsys):
    assert main(["bench", "longbench", "--data-dir", str(tmp_path), "--tasks", "qasper"]) == 2
    assert "qasper.jsonl not found" in capsys.readouterr().err


def test_plot_needle_and_score_files(tmp_path, capsys):
    rows = [{"recipe": r, "budget": b, "length": n, "depth": d, "correct": (r == "full") or d < 0.5}
            for r, b in (("full", None), ("snapkv", 64)) for n in (512, 1024) for d in (0.0, 0.5, 1.0)]
    needle = tmp_path / "needle.json"
    needle.write_text(json.dumps({"meta": {}, "rows": rows}))
    assert main(["plot", str(needle)]) == 0
    assert (tmp_path / "needle.png").read_bytes()[:4] == b"\x89PNG"
    scored = tmp_path / "ruler.jsonl"
    lines = [{"type": "meta"}] + [{"type": "result", "recipe": r, "budget": b, "task": "t", "score": s}
                                  for r, b, s in (("full", None, 90), ("snapkv", 64, 40), ("snapkv", 128, 70))]
    scored.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["plot", str(scored), "--out", str(tmp_path / "curves.png"), "--title", "RULER"]) == 0
    assert (tmp_path / "curves.png").is_file() and "Wrote" in capsys.readouterr().out
    assert main(["plot", str(scored), "--task", "other"]) == 2
