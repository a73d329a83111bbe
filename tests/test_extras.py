"""Optional dependencies: a missing one is named with the extra that installs it, in one line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kvpress_lab.errors import KVPressLabError
from kvpress_lab.extras import EXTRAS, MissingExtraError, require_extra

ROOT = Path(__file__).resolve().parents[1]


def test_missing_module_names_the_extra():
    with pytest.raises(MissingExtraError) as info:
        require_extra("bench", "kvpress-lab demo", ("matplotlib", "no_such_module_kvpress"))
    message = str(info.value)
    assert message == ("kvpress-lab demo needs no_such_module_kvpress, which is not installed: "
                       "pip install 'kvpress-lab[bench]'")
    assert isinstance(info.value, KVPressLabError) and isinstance(info.value, ImportError)


def test_installed_modules_pass_and_unknown_extras_are_refused():
    require_extra("bench", "plotting", ("matplotlib",))
    with pytest.raises(ValueError, match="Expected an extra among"):
        require_extra("benchmarks", "x")


def test_every_extra_named_here_is_declared_in_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(declared)
    assert any(req.startswith("psutil") for req in declared["bench"])  # bench speed's peak-memory sampler


def test_cli_demo_names_the_bench_extra_before_loading_a_model(monkeypatch, capsys):
    import importlib.util

    from kvpress_lab.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["demo", "--model", "no/such-model"]) == 1
    err = capsys.readouterr().err
    assert err == "kvpress-lab demo: error: the demo (its heatmap) needs matplotlib, which is not installed: pip install 'kvpress-lab[bench]'\n"


@pytest.mark.parametrize(("argv", "module", "message"), [
    (["bench", "needle", "--model", "no/such-model", "--out", "{tmp}/n.jsonl"], "matplotlib",
     "kvpress-lab bench: error: bench needle (its heatmap) needs matplotlib, which is not installed: "
     "pip install 'kvpress-lab[bench]'"),
    (["bench", "needle", "--launcher", "local", "--shards", "2", "--out", "{tmp}/n.jsonl"], "submitit",
     "kvpress-lab bench: error: --launcher local needs submitit, which is not installed: pip install 'kvpress-lab[slurm]'"),
    (["plot", "{tmp}/x.json"], "matplotlib",
     "kvpress-lab plot: error: plotting needs matplotlib, which is not installed: pip install 'kvpress-lab[bench]'"),
])
def test_commands_name_their_extra_before_any_work(monkeypatch, capsys, tmp_path, argv, module, message):
    import importlib.util

    from kvpress_lab.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 1
    assert capsys.readouterr().err == message + "\n"
    assert list(tmp_path.iterdir()) == []  # nothing ran
