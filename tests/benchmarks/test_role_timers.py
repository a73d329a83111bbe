"""Role timers: opt-in, off by default, every role timed once per compressed layer, results unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.tiny_models import tiny_model
from kvpress_lab import Recipe, compress_many
from kvpress_lab.benchmarks import bench
from kvpress_lab.cli import main
from kvpress_lab.engine.families import ModelAdapter
from kvpress_lab.engine.role_timers import ROLES, RoleTimers, time_roles
from kvpress_lab.engine.session import CompressionSession


def _ids(length: int = 48) -> torch.Tensor:
    return torch.randint(3, 90, (1, length), generator=torch.Generator().manual_seed(0))


def _same(a, b) -> bool:
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values) for x, y in zip(a.layers, b.layers)
               if hasattr(x, "keys") and hasattr(y, "keys"))


def test_timers_are_off_by_default_and_on_inside_time_roles():
    model = tiny_model("llama", layers=2)
    recipe = Recipe.preset("snapkv", budget=16)
    with CompressionSession(recipe, model) as before:
        assert before.timers is None
    with time_roles(model) as log, CompressionSession(recipe, model) as inside:
        assert isinstance(inside.timers, RoleTimers) and log.entries == [(recipe, inside.timers)]
    with CompressionSession(recipe, model) as after:
        assert after.timers is None  # the time_roles block has ended
    with time_roles(model), pytest.raises(RuntimeError, match="already active"):
        with time_roles(model):
            pass


@pytest.mark.parametrize("preset", ["snapkv", "pyramidkv", "h2o"])
def test_every_role_is_timed_once_per_compressed_layer_and_the_cache_is_unchanged(preset):
    model = tiny_model("llama", layers=4)
    layers = len(ModelAdapter.for_model(model).compressible)
    recipe = Recipe.preset(preset, budget=16)
    plain = recipe.prefill(model, _ids())
    timers = RoleTimers()
    with CompressionSession(recipe, model, timers=timers) as session:
        cache = model(_ids(), use_cache=True).cache
    assert session.timers is timers and _same(cache, plain)
    assert all(timers.seconds[role] >= 0.0 for role in ROLES)
    assert timers.total == pytest.approx(sum(timers.seconds.values())) and timers.total > 0
    assert timers.calls["score"] == timers.calls["select"] == timers.calls["gather"] == layers
    assert timers.calls["allocate"] >= layers + 1  # the plan, then each layer's budgets
    assert set(timers.as_dict()) == {f"{role}_s" for role in ROLES} | {"roles_s"}


def test_compress_many_logs_one_timer_per_recipe_in_order():
    model = tiny_model("qwen3", layers=4)
    recipes = [Recipe.preset("snapkv", budget=16), Recipe.preset("h2o", budget=24), Recipe.preset("snapkv", budget=16)]
    with time_roles(model) as log:
        caches = compress_many(model, _ids(), recipes)
    assert [recipe for recipe, _ in log.entries] == recipes
    assert all(timers.calls["gather"] > 0 for _, timers in log.entries)
    assert all(_same(cache, recipe.prefill(model, _ids())) for cache, recipe in zip(caches, recipes))


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role must be one of"):
        with RoleTimers().time("decode"):
            pass


def test_bench_speed_reports_the_roles_as_a_share_of_the_prefill(monkeypatch, tiny_llama, char_tokenizer, tmp_path, capsys):
    monkeypatch.setattr(bench, "load", lambda args: (tiny_llama, char_tokenizer))
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", "--lengths", "150", "--recipes", "full,pyramidkv", "--budgets", "32",
                 "--decode-steps", "2", "--repeats", "2", "--out", str(out), "--no-progress"]) == 0
    full, pyramid = json.loads(out.read_text())["rows"]
    assert full["roles_s"] is None and full["roles_share"] is None
    assert 0 < pyramid["roles_s"] < pyramid["prefill_s"] and 0 < pyramid["roles_share"] < 1
    assert pyramid["roles_s"] == pytest.approx(sum(pyramid[f"{role}_s"] for role in ROLES), rel=0.5)
    assert "roles % prefill" in capsys.readouterr().out
