"""``--device-map`` and ``--dtype auto`` on ``run``, ``bench`` and ``demo`` reach ``from_pretrained`` (via load_model)."""

from __future__ import annotations

import json

import pytest

import kvpress_lab.models
from kvpress_lab.cli import main


class Loaded(Exception):
    """Raised by the fake loader once it has recorded its arguments."""


@pytest.fixture
def seen(monkeypatch):
    calls = []

    def fake_load_model(source, **kwargs):
        calls.append(kwargs)
        raise Loaded

    monkeypatch.setattr(kvpress_lab.models, "load_model", fake_load_model)
    return calls


COMMANDS = {
    "run": ["run", "hello"],
    "bench": ["bench", "needle", "--lengths", "1024", "--recipes", "full"],
    "demo": ["demo", "--lengths", "1024"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_device_map_and_auto_dtype_reach_the_loader(seen, tmp_path, command):
    argv = [*COMMANDS[command], "--device-map", "auto", "--dtype", "auto"]
    argv += {"run": [], "bench": ["--out", str(tmp_path / "n.jsonl")], "demo": ["--out-dir", str(tmp_path)]}[command]
    with pytest.raises(Loaded):
        main(argv)
    (kwargs,) = seen
    assert kwargs["device_map"] == "auto" and kwargs["dtype"] == "auto" and "device" not in kwargs


def test_a_json_device_map_is_passed_as_a_mapping(seen, tmp_path):
    mapping = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    for given in (json.dumps(mapping), str(tmp_path / "map.json")):
        with pytest.raises(Loaded):
            main(["run", "hello", "--device-map", given])
    assert [kwargs["device_map"] for kwargs in seen] == [mapping, mapping]
    assert all(kwargs["dtype"] == "float32" for kwargs in seen)


def test_without_device_map_the_device_is_used(seen):
    with pytest.raises(Loaded):
        main(["run", "hello", "--device", "cpu"])
    assert seen[0]["device"] == "cpu" and "device_map" not in seen[0]


@pytest.mark.parametrize("argv, status, message", [
    (["run", "hello", "--device", "cpu", "--device-map", "auto"], 2, "--device cpu conflicts with --device-map"),
    (["run", "hello", "--device-map", "everywhere"], 2, "--device-map must be auto, balanced"),
    (["run", "hello", "--device-map", "{\"a\": true}"], 2, "non-empty object of module name -> device"),
    (["run", "hello", "--device-map", "{not json"], 2, "is not valid JSON"),
    (["run", "hello", "--dtype", "float64"], 2, "invalid choice"),
])
def test_bad_device_maps_are_usage_errors(seen, capsys, argv, status, message):
    if status == 2 and "conflicts" not in message:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    else:
        assert main(argv) == status
    assert message in capsys.readouterr().err and seen == []


def test_a_device_map_naming_a_missing_gpu_fails_before_loading(seen, capsys):
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(["run", "hello", "--device-map", json.dumps({"model": "cuda:7"})]) == 2
    assert "--device-map cuda:7" in capsys.readouterr().err and seen == []
