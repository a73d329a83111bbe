"""``kvpress-lab plot`` draws every kind of file its help names (the committed result files of the docs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvpress_lab.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "results" / "docs"


@pytest.mark.parametrize("name", ["needle-query-aware/needle.json",  # kvpress-lab demo
                                  "speed/speed.json",  # kvpress-lab bench speed
                                  "needle-query-agnostic/needle.jsonl"])  # kvpress-lab bench needle
def test_plot_draws_each_documented_file_kind(tmp_path, capsys, name):
    out = tmp_path / "figure.png"
    assert main(["plot", str(RESULTS / name), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.startswith(f"Wrote {out} from ")


def test_speed_plot_has_a_line_per_recipe_and_both_panels(monkeypatch, tmp_path):
    from kvpress_lab.benchmarks import plot as plot_module
    from kvpress_lab.benchmarks.plot_speed import plot_speed
    from kvpress_lab.benchmarks.results import read_rows

    saved = {}
    monkeypatch.setattr("kvpress_lab.benchmarks.plot_speed._save", lambda figure, path: saved.setdefault("figure", figure))
    rows = read_rows(RESULTS / "speed" / "speed.json")
    plot_speed(rows, tmp_path / "x.png")
    top, bottom = saved["figure"].axes
    labels = [line.get_label() for line in top.get_lines()]
    assert labels == ["full cache", "pyramidkv @ 128", "snapkv @ 128"]
    full = bottom.get_lines()[0].get_ydata()
    compressed = bottom.get_lines()[1].get_ydata()
    assert all(c < f for c, f in zip(compressed, full))  # MiB after prefill: compressed below full
    plot_module._pyplot().close(saved["figure"])
