"""``--shard`` defaults from the scheduler's environment (SLURM arrays, torchrun/accelerate); explicit wins."""

from __future__ import annotations

import pytest

from kvpress_lab.benchmarks import bench
from kvpress_lab.benchmarks.results import read_meta, read_rows
from kvpress_lab.benchmarks.sweep import plan_cells, select_shard, shard_from_env
from kvpress_lab.cli import main

SCHEDULER_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP",
                       "RANK", "WORLD_SIZE")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in SCHEDULER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("environ, shard", [
    ({}, None),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "16"}, (3, 16)),
    # --array=1-16: ids start at MIN
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_ARRAY_TASK_MIN": "1"}, (0, 16)),
    ({"SLURM_ARRAY_TASK_ID": "16", "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_ARRAY_TASK_MIN": "1"}, (15, 16)),
    # --array=10-16:2 -> ids 10,12,14,16
    ({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10",
      "SLURM_ARRAY_TASK_STEP": "2"}, (2, 4)),
    ({"RANK": "2", "WORLD_SIZE": "4"}, (2, 4)),
    ({"RANK": " 0 ", "WORLD_SIZE": "1"}, (0, 1)),
    # torchrun with 2 ranks inside task 1 of a 3-task array: shard 1 * 2 + rank of 6
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "RANK": "1", "WORLD_SIZE": "2"}, (3, 6)),
])
def test_shard_from_environment(environ, shard):
    found = shard_from_env(environ)
    assert (found if found is None else found[0]) == shard


def test_every_process_of_an_array_of_torchrun_jobs_gets_its_own_shard():
    shards = [shard_from_env({"SLURM_ARRAY_TASK_ID": str(5 + task), "SLURM_ARRAY_TASK_MIN": "5",
                              "SLURM_ARRAY_TASK_COUNT": "3", "RANK": str(rank), "WORLD_SIZE": "4"})[0]
              for task in range(3) for rank in range(4)]
    assert sorted(shards) == [(i, 12) for i in range(12)]


@pytest.mark.parametrize("environ, names", [
    ({"SLURM_ARRAY_TASK_ID": "16", "SLURM_ARRAY_TASK_COUNT": "16"}, ["SLURM_ARRAY_TASK_ID=16", "SLURM_ARRAY_TASK_COUNT=16"]),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, ["SLURM_ARRAY_TASK_MIN=1"]),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, ["SLURM_ARRAY_TASK_ID='x'", "not an integer"]),
    ({"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10",
      "SLURM_ARRAY_TASK_STEP": "2"}, ["SLURM_ARRAY_TASK_STEP=2", "MIN + k * STEP"]),
    ({"SLURM_ARRAY_TASK_ID": "2"}, ["SLURM_ARRAY_TASK_ID='2'", "SLURM_ARRAY_TASK_COUNT is not"]),
    ({"RANK": "4", "WORLD_SIZE": "4"}, ["RANK=4, WORLD_SIZE=4"]),
    ({"RANK": "-1", "WORLD_SIZE": "4"}, ["RANK=-1"]),
    ({"RANK": "0", "WORLD_SIZE": "4.0"}, ["WORLD_SIZE='4.0'", "not an integer"]),
    ({"WORLD_SIZE": "4"}, ["WORLD_SIZE='4'", "RANK is not"]),
])
def test_inconsistent_environment_is_a_clear_error(environ, names):
    with pytest.raises(ValueError) as error:
        shard_from_env(environ)
    for name in names:
        assert name in str(error.value)
    assert "--shard" in str(error.value)


@pytest.fixture
def tiny(monkeypatch, tiny_llama, char_tokenizer):
    monkeypatch.setattr(bench, "load", lambda args: (tiny_llama, char_tokenizer))


ARGV = ["bench", "needle", "--lengths", "128", "--depths", "0,0.5,1", "--recipes", "full,snapkv", "--budgets", "32",
        "--no-progress", "--max-new-tokens", "1"]
CELLS = plan_cells(["full", "snapkv"], [32], ["L=128|d=0", "L=128|d=0.5", "L=128|d=1"])


def test_bench_takes_its_shard_from_slurm_variables(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    out = tmp_path / "needle.jsonl"
    assert main([*ARGV, "--out", str(out)]) == 0
    assert [r["cell"] for r in read_rows(out)] == [c.key for c in select_shard(CELLS, (1, 4))]
    assert read_meta(out)[0]["shard"] == "1/4"
    assert "shard 1/4 from the environment (SLURM_ARRAY_TASK_ID=2" in capsys.readouterr().err


def test_bench_takes_its_shard_from_torchrun_variables_and_explicit_shard_wins(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "needle.jsonl"
    assert main([*ARGV, "--out", str(out)]) == 0
    assert [r["cell"] for r in read_rows(out)] == [c.key for c in select_shard(CELLS, (1, 2))]
    explicit = tmp_path / "explicit.jsonl"
    assert main([*ARGV, "--out", str(explicit), "--shard", "0/3"]) == 0
    assert [r["cell"] for r in read_rows(explicit)] == [c.key for c in select_shard(CELLS, (0, 3))]


def test_bad_environment_fails_before_the_model_loads(monkeypatch, tmp_path, capsys):
    def load(args):
        raise RuntimeError("the model loads")

    monkeypatch.setattr(bench, "load", load)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert main([*ARGV, "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvpress-lab bench: error:") and "SLURM_ARRAY_TASK_ID=4" in err
    with pytest.raises(RuntimeError, match="the model loads"):  # an explicit --shard does not read the environment
        main([*ARGV, "--out", str(tmp_path / "x.jsonl"), "--shard", "1/2"])
