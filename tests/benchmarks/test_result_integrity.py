"""Result files: concurrent appenders never corrupt or lose a line; the meta record names the code's git commit."""

from __future__ import annotations

import json
import multiprocessing
import pathlib
import shutil
import subprocess
import time

import pytest

from kvpress_lab.benchmarks import results
from kvpress_lab.benchmarks.results import append_jsonl, read_jsonl, read_meta, read_rows, run_metadata, source_commit
from kvpress_lab.benchmarks.sweep import plan_cells, run_sweep

WRITERS, BATCHES, PER_BATCH = 4, 15, 4


class _SplitWrites:
    """A file whose writes land in small pieces, as appends do on a network filesystem (NFS)."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        for start in range(0, len(data), 97):
            self.file.write(data[start:start + 97])
            self.file.flush()
            time.sleep(0.0002)  # let another writer in between two pieces
        return len(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def _append_batches(path: str, writer: int) -> None:
    original = pathlib.Path.open
    pathlib.Path.open = lambda self, *a, **k: _SplitWrites(original(self, *a, **k))  # this process only
    for batch in range(BATCHES):
        append_jsonl(path, [{"writer": writer, "batch": batch, "item": item, "pad": "x" * 300} for item in range(PER_BATCH)])


def test_concurrent_appenders_never_interleave_or_lose_lines(tmp_path):
    path = tmp_path / "shared.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_batches, args=(str(path), writer)) for writer in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * WRITERS
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert len(records) == WRITERS * BATCHES * PER_BATCH
    assert sorted((r["writer"], r["batch"], r["item"]) for r in records) == [
        (w, b, i) for w in range(WRITERS) for b in range(BATCHES) for i in range(PER_BATCH)]
    for start in range(0, len(records), PER_BATCH):  # each append's records stay together, in order
        batch = records[start:start + PER_BATCH]
        assert [(r["writer"], r["batch"], r["item"]) for r in batch] == [
            (batch[0]["writer"], batch[0]["batch"], item) for item in range(PER_BATCH)]


def _run_shard(path: str, index: int, count: int) -> None:
    cells = plan_cells(["full", "snapkv"], [32, 64], [str(i) for i in range(10)])
    run_sweep(cells, lambda cell: {"score": 1.0, "output": "y" * 2000}, path,
              {"benchmark": "fake", "model": "m"}, shard=(index, count), progress=False)


def test_shards_sweeping_into_one_file_at_once_keep_every_cell(tmp_path):
    path = tmp_path / "sweep.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_run_shard, args=(str(path), index, 3)) for index in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    bad = []
    assert len(read_jsonl(path, on_bad_line=bad.append)) == 30 + 3 and bad == []
    assert sorted(r["cell"] for r in read_rows(path)) == sorted(c.key for c in plan_cells(["full", "snapkv"], [32, 64],
                                                                                           [str(i) for i in range(10)]))
    assert sorted(m["shard"] for m in read_meta(path)) == ["0/3", "1/3", "2/3"]


def test_an_append_after_a_cut_line_starts_on_a_new_line(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"type": "result", "cell": "a"}\n{"type": "res')
    append_jsonl(path, [{"type": "result", "cell": "b"}])
    bad = []
    assert [r["cell"] for r in read_jsonl(path, on_bad_line=bad.append)] == ["a", "b"] and bad == [f"{path}:2"]


GIT = shutil.which("git")


@pytest.fixture
def fresh_commit_cache():
    source_commit.cache_clear()
    yield
    source_commit.cache_clear()


def _git(folder, *arguments):
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *arguments],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_commit_of_a_tracked_package_and_none_for_an_untracked_one(tmp_path, fresh_commit_cache):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "venv_pkg").mkdir()
    (repo / "venv_pkg" / "__init__.py").write_text("")  # like site-packages inside someone's project: untracked
    _git(repo, "init", "-q")
    _git(repo, "add", "pkg/__init__.py")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert source_commit(str(repo / "pkg")) == head
    assert source_commit(str(repo / "venv_pkg")) is None
    (repo / "pkg" / "__init__.py").write_text("x = 1\n")
    source_commit.cache_clear()
    assert source_commit(str(repo / "pkg")) == head + "+dirty"
    assert source_commit(str(tmp_path)) is None  # not a git checkout at all


def test_no_git_on_path_records_none_and_never_fails(monkeypatch, tmp_path, fresh_commit_cache):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert source_commit() is None
    record = run_metadata("needle", "m", {}, seed=0, device="cpu")
    assert record["git_commit"] is None and record["versions"]["kvpress_lab"]


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_sweep_meta_records_this_checkouts_commit(tmp_path, fresh_commit_cache):
    import kvpress_lab

    package = pathlib.Path(kvpress_lab.__file__).resolve().parent
    tracked = subprocess.run(["git", "-C", str(package), "ls-files", "--error-unmatch", "__init__.py"],
                             capture_output=True).returncode == 0
    if not tracked:
        pytest.skip("kvpress_lab is not installed from a git checkout")
    head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    path = tmp_path / "s.jsonl"
    meta = run_metadata("fake", "m", {}, seed=0, device="cpu")
    run_sweep(plan_cells(["full"], [], ["a"]), lambda cell: {"score": 1.0}, path, meta, progress=False)
    assert read_meta(path)[0]["git_commit"].removesuffix("+dirty") == head
    assert results.source_commit() == read_meta(path)[0]["git_commit"]
