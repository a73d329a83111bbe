"""``bench ... --launcher local --shards N``: submitit's local executor runs every shard as its own job."""

from __future__ import annotations

import collections
import pathlib
import sys

import pytest

from kvpress_lab.benchmarks import bench, launch
from kvpress_lab.benchmarks.results import read_meta, read_rows
from kvpress_lab.benchmarks.sweep import plan_cells, select_shard
from kvpress_lab.cli import main

pytest.importorskip("submitit")

TESTS = pathlib.Path(__file__).resolve().parents[1]
ARGV = ["bench", "needle", "--lengths", "128", "--depths", "0,0.5,1", "--recipes", "full,snapkv", "--budgets", "32",
        "--no-progress", "--max-new-tokens", "1"]
CELLS = plan_cells(["full", "snapkv"], [32], ["L=128|d=0", "L=128|d=0.5", "L=128|d=1"])


@pytest.fixture
def tiny_jobs(monkeypatch):
    from helpers.tiny_bench import run_tiny_shard

    monkeypatch.setattr(launch, "run_shard", run_tiny_shard)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the job processes import helpers.tiny_bench
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_local_launcher_runs_every_shard_and_the_shard_files_cover_the_grid_once(tiny_jobs, tmp_path, capsys,
                                                                                 monkeypatch):
    """The default --slurm-folder results/slurm/%j: folders named by job id, nothing named %j or *.lock left."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "needle.jsonl"
    argv = [*ARGV, "--out", str(out), "--launcher", "local", "--shards", "2"]
    assert main(argv) == 0
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert not [p for p in left if "%j" in p or p.endswith(".lock")], left
    job_folders = sorted((tmp_path / "results" / "slurm").iterdir())
    assert len(job_folders) == 2
    files = [tmp_path / "needle.shard0-of-2.jsonl", tmp_path / "needle.shard1-of-2.jsonl"]
    assert sorted(tmp_path.glob("needle*.jsonl")) == files and not out.exists()
    for index, path in enumerate(files):
        assert [r["cell"] for r in read_rows(path)] == [c.key for c in select_shard(CELLS, (index, 2))]
        assert [m["shard"] for m in read_meta(path)] == [f"{index}/2"]
        assert read_meta(path)[0]["argv"] == sys.argv  # the launching command, not submitit's job runner
    counts = collections.Counter(r["cell"] for path in files for r in read_rows(path))
    assert counts == {c.key: 1 for c in CELLS}
    printed = capsys.readouterr().out
    submitted = next(line for line in printed.splitlines() if line.startswith("Submitted 2 local jobs"))
    assert "%j" not in submitted and all(str(folder) in submitted for folder in job_folders)
    assert "2 of 2 shards finished" in printed and f"kvpress-lab summarize {tmp_path}/needle.shard*-of-2.jsonl" in printed
    assert main(["summarize", *map(str, files)]) == 0  # the merged table is complete


def test_a_failing_shard_job_is_reported_with_its_log(tiny_jobs, monkeypatch, tmp_path, capsys):
    from helpers.tiny_bench import failing_shard

    monkeypatch.setattr(launch, "run_shard", failing_shard)
    assert main([*ARGV, "--out", str(tmp_path / "n.jsonl"), "--launcher", "local", "--shards", "2",
                 "--slurm-folder", str(tmp_path / "jobs")]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: broken shard 0 (log:" in err and "RuntimeError: broken shard 1 (log:" in err


@pytest.mark.parametrize("extra, message", [
    (["--launcher", "local", "--shard", "0/2"], "--shard 0/2 conflicts with --launcher"),
    (["--shards", "4"], "--shards 4 does nothing without --launcher"),
])
def test_launcher_usage_errors(monkeypatch, tmp_path, capsys, extra, message):
    monkeypatch.setattr(bench, "load", lambda args: pytest.fail("must not load"))
    assert main([*ARGV, "--out", str(tmp_path / "n.jsonl"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_slurm_launcher_without_sbatch_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main([*ARGV, "--out", str(tmp_path / "n.jsonl"), "--launcher", "slurm", "--shards", "16"]) == 2
    assert "needs SLURM's sbatch on PATH" in capsys.readouterr().err


def test_shard_files_are_named_after_the_output():
    assert launch.shard_out("results/needle.jsonl", 3, 16) == pathlib.Path("results/needle.shard3-of-16.jsonl")

