"""In-process registration: ``kvpress_lab.register`` / ``register_plugin`` / ``unregister``.

What a notebook user does instead of writing an entry point. Each test runs against a fresh
process-wide registry and no in-process registrations (the fixture below), so none leaks into
another test.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time
import types
from dataclasses import dataclass
from typing import ClassVar

import pytest
from helpers.malformed_strategies import NoName, NoScope, NotADataclass

import kvpress_lab
import kvpress_lab.registry as registry_module
from kvpress_lab import DuplicateStrategyError, PluginError, Preset, Recipe, UnknownStrategyError, hookimpl
from kvpress_lab.registry import AUTOLOAD_ENV, Registry


@pytest.fixture(autouse=True)
def fresh_process_registry(monkeypatch):
    """No in-process registration and no built registry; both restored afterwards."""
    monkeypatch.setattr(registry_module, "_IN_PROCESS", {}, raising=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", None)
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)


def make_scorer(name: str, **attributes: object) -> type:
    @dataclass(frozen=True)
    class NotebookScorer:
        """Scores every entry by its position (a notebook scorer)."""

        weight: float = 1.0

        def score(self, view):  # pragma: no cover - never called
            raise NotImplementedError

    NotebookScorer.name = name
    for key, value in attributes.items():
        setattr(NotebookScorer, key, value)
    return NotebookScorer


def make_plugin(**hooks: object) -> types.SimpleNamespace:
    """``make_plugin(scorers=[A])`` implements ``kvpress_lab_register_scorers``."""

    def impl(returned: object):
        @hookimpl
        def hook():
            return returned

        return hook

    return types.SimpleNamespace(**{f"kvpress_lab_register_{role}": impl(value) for role, value in hooks.items()})


def names(role: str) -> list[str]:
    return kvpress_lab.get_registry().names(role)


# -- the public API -------------------------------------------------------------------------------


def test_the_functions_are_exported_from_the_package():
    for name in ("register", "register_plugin", "unregister", "unregister_plugin"):
        assert name in kvpress_lab.__all__
        assert getattr(kvpress_lab, name) is getattr(registry_module, name)


def test_a_decorated_scorer_class_is_usable_in_a_recipe():
    @kvpress_lab.register
    @dataclass(frozen=True)
    class MyNotebookScorer:
        """Scores entries by recency."""

        name: ClassVar[str] = "my_notebook_scorer"
        recency: float = 0.5

        def score(self, view):  # pragma: no cover - never called
            raise NotImplementedError

    assert isinstance(MyNotebookScorer, type) and MyNotebookScorer.name == "my_notebook_scorer"  # returned as is
    recipe = Recipe(scorer="my_notebook_scorer", budget=64, scorer_kwargs={"recency": 0.8})
    assert isinstance(recipe.strategies.scorer, MyNotebookScorer)
    assert recipe.strategies.scorer.recency == 0.8
    entry = kvpress_lab.get_registry().get("scorer", "my_notebook_scorer")
    assert entry.obj is MyNotebookScorer and entry.plugin == "in-process:scorer:my_notebook_scorer"
    assert entry.summary == "Scores entries by recency."
    assert entry in kvpress_lab.available("scorer")
    assert "in-process:scorer:my_notebook_scorer" in kvpress_lab.get_registry().plugins()


def test_registering_before_the_registry_is_built_builds_it_with_the_builtins():
    kvpress_lab.register(make_scorer("test_early"))
    assert "test_early" in names("scorer") and "snapkv_window" in names("scorer")


@dataclass(frozen=True)
class InferAllocator:
    """An allocator."""

    name: ClassVar[str] = "test_infer_allocator"
    scope: ClassVar[str] = "static"

    def allocate(self, request):  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class InferExecutor:
    """An executor."""

    name: ClassVar[str] = "test_infer_executor"

    def select(self, scores, keep, forced, candidates):  # pragma: no cover
        raise NotImplementedError

    def build_layer(self, keys, values, selection, logical_length):  # pragma: no cover
        raise NotImplementedError


@pytest.mark.parametrize(
    ("obj", "role", "name"),
    [
        (InferAllocator, "allocator", "test_infer_allocator"),
        (make_scorer("test_infer_scorer"), "scorer", "test_infer_scorer"),
        (InferExecutor, "executor", "test_infer_executor"),
        (Preset("test-infer-preset", "a preset", {"scorer": "h2o"}), "preset", "test-infer-preset"),
    ],
)
def test_the_role_is_inferred_from_the_methods(obj, role, name):
    assert kvpress_lab.register(obj) is obj
    entry = kvpress_lab.get_registry().get(role, name)
    assert entry.obj is obj and entry.plugin == f"in-process:{role}:{name}"


@dataclass(frozen=True)
class ScoresAndAllocates:
    """Two roles at once."""

    name: ClassVar[str] = "test_two_roles"
    scope: ClassVar[str] = "static"

    def score(self, view):  # pragma: no cover
        raise NotImplementedError

    def allocate(self, request):  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class HalfAnExecutor:
    """Only select()."""

    name: ClassVar[str] = "test_half"

    def select(self, scores, keep, forced, candidates):  # pragma: no cover
        raise NotImplementedError


def test_an_ambiguous_role_raises_type_error_naming_the_candidates():
    with pytest.raises(TypeError) as info:
        kvpress_lab.register(ScoresAndAllocates)
    message = str(info.value)
    assert "ScoresAndAllocates" in message and "allocator" in message and "scorer" in message and "role=" in message
    assert "test_two_roles" not in names("scorer") and "test_two_roles" not in names("allocator")


@pytest.mark.parametrize("obj", [HalfAnExecutor, object, 42])
def test_no_inferable_role_raises_type_error_listing_the_methods(obj):
    with pytest.raises(TypeError) as info:
        kvpress_lab.register(obj)
    message = str(info.value)
    for method in ("allocate", "score", "select", "build_layer", "Preset", "role="):
        assert method in message, method


def test_an_explicit_role_skips_inference_and_works_as_a_decorator_factory():
    decorator = kvpress_lab.register(role="scorer")
    cls = make_scorer("test_explicit", allocate=lambda self, request: None)  # would be ambiguous
    assert decorator(cls) is cls
    assert kvpress_lab.get_registry().get("scorer", "test_explicit").obj is cls
    assert "test_explicit" not in names("allocator")


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role must be one of allocator, scorer, executor, preset, got 'scorers'"):
        kvpress_lab.register(make_scorer("test_bad_role"), role="scorers")


# -- the same validation as entry-point plugins ----------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "role", "fragments"),
    [
        (NotADataclass, None, ["NotADataclass", "as a scorer", "must be dataclass classes"]),
        (make_scorer("test_instance")(), None, ["as a scorer", "must be dataclass classes"]),
        (NoName, None, ["NoName", "with name None", "class attribute `name`"]),
        (make_scorer("Bad Name"), None, ["with name 'Bad Name'", "class attribute `name` matching"]),
        (make_scorer("test_no_select"), "executor", ["no `select` method required by the executor protocol"]),
        (NoScope, None, ["`scope` must be one of", "got None"]),
        ({"name": "test-preset"}, "preset", ["as a preset", "kvpress_lab.Preset instances"]),
    ],
)
def test_wrong_things_raise_the_plugin_errors_of_entry_point_plugins(obj, role, fragments):
    before = list(kvpress_lab.available())
    with pytest.raises(PluginError) as info:
        kvpress_lab.register(obj, role=role)
    message = str(info.value)
    assert "'in-process'" in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, TypeError)
    assert list(kvpress_lab.available()) == before
    assert registry_module._IN_PROCESS == {}


def test_a_builtin_name_clash_names_both_plugins_and_changes_nothing():
    before = kvpress_lab.get_registry().get("scorer", "snapkv_window")
    with pytest.raises(DuplicateStrategyError) as info:
        kvpress_lab.register(make_scorer("snapkv_window"))
    assert info.value.plugins == ("kvpress-lab:scorers", "in-process:scorer:snapkv_window")
    assert "'kvpress-lab:scorers'" in str(info.value) and "'in-process:scorer:snapkv_window'" in str(info.value)
    assert kvpress_lab.get_registry().get("scorer", "snapkv_window") is before
    with pytest.raises(DuplicateStrategyError):  # replace=True only replaces in-process registrations
        kvpress_lab.register(make_scorer("snapkv_window"), replace=True)
    assert kvpress_lab.get_registry().get("scorer", "snapkv_window") is before


def test_registering_a_name_twice_says_how_to_replace_it():
    first = kvpress_lab.register(make_scorer("test_twice"))
    with pytest.raises(DuplicateStrategyError) as info:
        kvpress_lab.register(make_scorer("test_twice"))  # a notebook cell run again
    message = str(info.value)
    assert "'test_twice'" in message and "'in-process:scorer:test_twice'" in message
    assert "kvpress_lab.unregister('test_twice', 'scorer')" in message and "replace=True" in message
    assert kvpress_lab.get_registry().get("scorer", "test_twice").obj is first


def test_replace_true_replaces_an_in_process_registration():
    kvpress_lab.register(make_scorer("test_replaced"))
    second = kvpress_lab.register(make_scorer("test_replaced"), replace=True)
    assert kvpress_lab.get_registry().get("scorer", "test_replaced").obj is second
    assert Recipe(scorer="test_replaced").strategies.scorer.__class__ is second
    assert list(registry_module._IN_PROCESS) == ["in-process:scorer:test_replaced"]


def test_a_failed_replacement_keeps_the_previous_registration():
    first = kvpress_lab.register(make_scorer("test_kept"))
    with pytest.raises(PluginError):
        kvpress_lab.register(make_scorer("test_kept", score=None), replace=True)
    assert kvpress_lab.get_registry().get("scorer", "test_kept").obj is first


def test_a_name_may_repeat_across_roles_in_process():
    kvpress_lab.register(Preset("tova", "a preset named like a scorer", {"scorer": "tova"}))
    assert kvpress_lab.get_registry().get("preset", "tova").plugin == "in-process:preset:tova"
    assert kvpress_lab.get_registry().get("scorer", "tova").plugin == "kvpress-lab:scorers"
    kvpress_lab.register(make_scorer("test_shared"))
    kvpress_lab.register(Preset("test_shared", "same name, other role", {"scorer": "test_shared"}))
    assert Recipe.preset("test_shared").scorer == "test_shared"


def test_an_in_process_preset_may_use_an_in_process_scorer():
    kvpress_lab.register(make_scorer("test_preset_scorer"))
    kvpress_lab.register(Preset("test-preset-recipe", "mine", {"scorer": "test_preset_scorer", "window": 4}))
    recipe = Recipe.preset("test-preset-recipe", budget=32)
    assert recipe.scorer == "test_preset_scorer" and recipe.window == 4 and recipe.preset_name == "test-preset-recipe"


# -- lifetime: reload_registry and unregister --------------------------------------------------------


def test_registrations_survive_reload_registry():
    cls = kvpress_lab.register(make_scorer("test_survivor"))
    old = kvpress_lab.get_registry()
    new = kvpress_lab.reload_registry()
    assert new is not old and new is kvpress_lab.get_registry()
    assert new.get("scorer", "test_survivor").obj is cls


def test_registrations_survive_the_autoload_switch(monkeypatch):
    kvpress_lab.register(make_scorer("test_no_autoload"))
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry = kvpress_lab.reload_registry()
    assert not registry.autoload and "test_no_autoload" in registry.names("scorer")


def test_unregister_removes_it_and_a_recipe_then_fails():
    kvpress_lab.register(make_scorer("test_removed"))
    Recipe(scorer="test_removed")
    assert kvpress_lab.unregister("test_removed", "scorer") is None
    assert "test_removed" not in names("scorer")
    assert "in-process:scorer:test_removed" not in kvpress_lab.get_registry().plugins()
    with pytest.raises(UnknownStrategyError, match="Unknown scorer 'test_removed'"):
        Recipe(scorer="test_removed")
    assert "test_removed" not in kvpress_lab.reload_registry().names("scorer")  # gone for good
    kvpress_lab.register(make_scorer("test_removed"))  # and the name is free again
    assert "test_removed" in names("scorer")


def test_unregister_refuses_what_a_plugin_registered():
    with pytest.raises(ValueError, match=r"'kvpress-lab:scorers'.*only in-process registrations"):
        kvpress_lab.unregister("snapkv_window", "scorer")
    assert "snapkv_window" in names("scorer")


def test_unregister_of_an_unknown_name_suggests_the_closest():
    kvpress_lab.register(make_scorer("test_unknown"))
    with pytest.raises(UnknownStrategyError, match="Did you mean 'test_unknown'"):
        kvpress_lab.unregister("test_unknwon", "scorer")
    with pytest.raises(UnknownStrategyError):
        kvpress_lab.unregister("test_unknown", "allocator")  # names are per role


# -- register_plugin: a whole plugin object -------------------------------------------------------------


def test_register_plugin_adds_every_hook_of_a_plugin_object():
    scorer = make_scorer("test_plugin_scorer")
    preset = Preset("test-plugin-preset", "uses it", {"scorer": "test_plugin_scorer"})
    plugin = make_plugin(scorers=[scorer], presets=[preset])
    assert kvpress_lab.register_plugin(plugin, name="notebook-plugin") == "notebook-plugin"
    registry = kvpress_lab.get_registry()
    assert registry.get("scorer", "test_plugin_scorer").plugin == "notebook-plugin"
    assert registry.get("preset", "test-plugin-preset").plugin == "notebook-plugin"
    assert Recipe.preset("test-plugin-preset").scorer == "test_plugin_scorer"
    assert "test_plugin_scorer" in kvpress_lab.reload_registry().names("scorer")
    with pytest.raises(ValueError, match=r"together with.*kvpress_lab.unregister_plugin\('notebook-plugin'\)"):
        kvpress_lab.unregister("test_plugin_scorer", "scorer")
    kvpress_lab.unregister_plugin("notebook-plugin")
    assert "test_plugin_scorer" not in names("scorer") and "test-plugin-preset" not in names("preset")
    assert "notebook-plugin" not in kvpress_lab.get_registry().plugins()


def test_register_plugin_names_a_plugin_after_its_module_or_class_by_default():
    module = types.ModuleType("my_notebook_plugin")
    module.kvpress_lab_register_scorers = hookimpl(lambda: [make_scorer("test_module_plugin")])
    assert kvpress_lab.register_plugin(module) == "in-process:my_notebook_plugin"

    class NotebookPlugin:
        @hookimpl
        def kvpress_lab_register_scorers(self):
            return [make_scorer("test_class_plugin")]

    assert kvpress_lab.register_plugin(NotebookPlugin()) == "in-process:NotebookPlugin"
    assert kvpress_lab.get_registry().get("scorer", "test_class_plugin").plugin == "in-process:NotebookPlugin"


def test_register_plugin_twice_under_one_name_is_refused():
    kvpress_lab.register_plugin(make_plugin(scorers=[make_scorer("test_plugin_a")]), name="twice")
    with pytest.raises(ValueError, match=r"plugin named 'twice' is already registered.*unregister_plugin\('twice'\)"):
        kvpress_lab.register_plugin(make_plugin(scorers=[make_scorer("test_plugin_b")]), name="twice")
    with pytest.raises(ValueError, match="already registered"):
        kvpress_lab.register_plugin(make_plugin(), name="kvpress-lab:scorers")
    assert "test_plugin_b" not in names("scorer")


def test_register_plugin_validates_like_an_entry_point_and_changes_nothing_on_failure():
    before = list(kvpress_lab.available())
    plugins_before = kvpress_lab.get_registry().plugins()
    bad = [
        (make_plugin(scorers=[NotADataclass]), PluginError, "must be dataclass classes"),
        (make_plugin(scorers="test_name"), PluginError, "must return a list, got str"),
        (types.SimpleNamespace(kvpress_lab_register_scorer=hookimpl(lambda: [])), PluginError, "unknown hook"),
        (make_plugin(scorers=[make_scorer("test_ok"), make_scorer("h2o")]), DuplicateStrategyError, "'kvpress-lab:scorers'"),
        (make_plugin(scorers=[make_scorer("test_self"), make_scorer("test_self")]), DuplicateStrategyError, "returns two scorers"),
    ]
    for plugin, error, fragment in bad:
        with pytest.raises(error, match=fragment) as info:
            kvpress_lab.register_plugin(plugin, name="bad-plugin")
        assert "'bad-plugin'" in str(info.value)
        assert list(kvpress_lab.available()) == before
        assert kvpress_lab.get_registry().plugins() == plugins_before
        assert registry_module._IN_PROCESS == {}


def test_unregister_plugin_of_an_unknown_name_lists_the_in_process_plugins():
    kvpress_lab.register(make_scorer("test_listed"))
    with pytest.raises(ValueError, match=r"No in-process plugin named 'nope'.*'in-process:scorer:test_listed'"):
        kvpress_lab.unregister_plugin("nope")


# -- an installed plugin clashing with an in-process registration -------------------------------------


SCORER_MODULE = """
    from dataclasses import dataclass
    from typing import ClassVar
    from kvpress_lab import hookimpl

    @dataclass(frozen=True)
    class Installed:
        \"\"\"A scorer from an installed distribution.\"\"\"
        name: ClassVar[str] = "test_clash"
        def score(self, view):
            raise NotImplementedError

    @hookimpl
    def kvpress_lab_register_scorers():
        return [Installed]
"""


@pytest.fixture
def forget_fake_module():
    """The fake plugin module is imported from tmp_path: drop it so that no other test sees it."""
    yield
    sys.modules.pop("kvpress_lab_test_clash", None)


def test_a_plugin_installed_later_that_clashes_names_both_and_unregister_recovers(tmp_path, monkeypatch, forget_fake_module):
    kvpress_lab.register(make_scorer("test_clash"))
    info = tmp_path / "fake_clash-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-clash\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[kvpress_lab]\nmain = kvpress_lab_test_clash\n")
    (tmp_path / "kvpress_lab_test_clash.py").write_text(textwrap.dedent(SCORER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DuplicateStrategyError) as error:
        kvpress_lab.reload_registry()
    assert error.value.plugins == ("fake-clash:main", "in-process:scorer:test_clash")
    assert "kvpress_lab.unregister('test_clash', 'scorer')" in str(error.value)
    kvpress_lab.unregister("test_clash", "scorer")  # works although the registry cannot be built
    assert kvpress_lab.get_registry().get("scorer", "test_clash").plugin == "fake-clash:main"


# -- a private Registry ---------------------------------------------------------------------------------


def test_a_private_registry_can_add_and_remove_plugins_without_touching_the_process_wide_one():
    registry = Registry(autoload=False)
    added = registry.add_plugin(make_plugin(scorers=[make_scorer("test_private")]), "private")
    assert [(e.role, e.name, e.plugin) for e in added] == [("scorer", "test_private", "private")]
    assert "test_private" not in names("scorer")
    assert [e.name for e in registry.remove_plugin("private")] == ["test_private"]
    assert "test_private" not in registry.names("scorer") and "private" not in registry.plugins()
    with pytest.raises(ValueError, match="No plugin named 'private'"):
        registry.remove_plugin("private")


# -- threads ----------------------------------------------------------------------------------------------


def test_concurrent_first_use_builds_one_registry(monkeypatch):
    builds = []

    class SlowRegistry(Registry):
        def __init__(self, *args, **kwargs):
            builds.append(threading.get_ident())
            time.sleep(0.05)  # widen the window in which a second thread could start its own build
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(registry_module, "Registry", SlowRegistry)
    barrier = threading.Barrier(8)
    results = []

    def use():
        barrier.wait()
        results.append(kvpress_lab.get_registry())

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len({id(r) for r in results}) == 1


def test_concurrent_registrations_and_reloads_lose_nothing():
    barrier = threading.Barrier(12)
    errors = []

    def register(i):
        barrier.wait()
        try:
            kvpress_lab.register(make_scorer(f"test_thread_{i}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reload():
        barrier.wait()
        for _ in range(3):
            kvpress_lab.reload_registry()

    threads = [threading.Thread(target=register, args=(i,)) for i in range(10)]
    threads += [threading.Thread(target=reload) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = {f"test_thread_{i}" for i in range(10)}
    assert expected <= set(names("scorer"))
    assert expected <= set(kvpress_lab.reload_registry().names("scorer"))
