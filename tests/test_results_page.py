"""The documentation's results page shows only committed result files, each with its provenance."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "explanation" / "results.rst"
RESULTS = ROOT / "results" / "docs"


def _referenced_files() -> list[Path]:
    text = PAGE.read_text(encoding="utf-8")
    paths = re.findall(r"^\.\. (?:figure|image):: (\S+)", text, flags=re.M)
    paths += re.findall(r"^\s+:file: (\S+)", text, flags=re.M)
    return [(PAGE.parent / p).resolve() for p in paths]


def test_every_figure_and_table_of_the_results_page_is_a_file_under_results_docs():
    files = _referenced_files()
    assert files, "the results page references no figure"
    for path in files:
        assert path.is_file(), f"{path} is referenced by {PAGE.name} but missing"
        assert RESULTS in path.parents, f"{path} is not under {RESULTS} (results must not live in docs/)"


def test_every_result_file_records_the_command_and_machine_that_produced_it():
    result_files = [p for p in RESULTS.rglob("*") if p.suffix in (".json", ".jsonl")]
    assert result_files
    for path in result_files:
        if path.suffix == ".jsonl":
            metas = [json.loads(line) for line in path.read_text().splitlines() if '"type": "meta"' in line]
        else:
            data = json.loads(path.read_text())
            metas = [data.get("meta", data)]
        assert metas, f"{path} has no meta record"
        for meta in metas:
            assert meta.get("argv"), f"{path}: meta without the command (argv)"
