"""The plugin registry: discovery, clashes, unknown names, the autoload switch, bad plugins."""

from __future__ import annotations

import sys
import textwrap
import types
from dataclasses import dataclass
from typing import ClassVar

import pytest
from helpers.malformed_strategies import ExecutorWithoutBuildLayer, NoName, NoScore, NotADataclass

import kvpress_lab
from kvpress_lab import DuplicateStrategyError, PluginError, Preset, UnknownStrategyError, hookimpl
from kvpress_lab.registry import AUTOLOAD_ENV, ROLES, Registry

#: The plugin that provides each role's built-ins (entry points of kvpress-lab's own pyproject.toml).
BUILTIN_PLUGINS = {
    "allocator": "kvpress-lab:allocators",
    "scorer": "kvpress-lab:scorers",
    "executor": "kvpress-lab:executors",
    "preset": "kvpress-lab:strategies",
}
EXAMPLE_PLUGIN = "kvpress-lab-example-plugin:example"


def make_plugin(**hooks: object) -> types.SimpleNamespace:
    """An in-memory plugin: ``make_plugin(scorers=[A])`` implements ``kvpress_lab_register_scorers``."""

    def impl(returned: object):
        @hookimpl
        def hook():
            return returned

        return hook

    return types.SimpleNamespace(**{f"kvpress_lab_register_{role}": impl(value) for role, value in hooks.items()})


def scorer_class(name: str) -> type:
    @dataclass(frozen=True)
    class _Scorer:
        """A test scorer."""

        def score(self, view):  # pragma: no cover - never called
            raise NotImplementedError

    _Scorer.name = name
    return _Scorer


# -- discovery --------------------------------------------------------------------------------


def test_every_role_has_builtins_from_its_own_plugin():
    registry = Registry(autoload=False)
    for role in ROLES:
        entries = [registry.get(role, name) for name in registry.names(role)]
        assert entries, f"no built-in {role} registered"
        assert {entry.plugin for entry in entries} == {BUILTIN_PLUGINS[role]}
    assert sorted(BUILTIN_PLUGINS.values()) == registry.plugins()


@pytest.mark.parametrize(
    ("role", "name"), [("allocator", "uniform"), ("scorer", "snapkv_window"), ("executor", "gather"), ("preset", "snapkv")]
)
def test_available_rows_name_their_plugin(role, name):
    rows = {(entry.role, entry.name): entry for entry in kvpress_lab.available()}
    assert rows[role, name].plugin == BUILTIN_PLUGINS[role]
    assert [entry.role for entry in kvpress_lab.available(role)] == [role] * len(kvpress_lab.available(role))
    assert name in [entry.name for entry in kvpress_lab.available(role)]


def test_registered_summary_is_docstring_first_line_or_preset_description():
    registry = Registry(autoload=False)
    scorer = registry.get("scorer", "snapkv_window")
    assert scorer.summary == scorer.obj.__doc__.strip().splitlines()[0]
    preset = registry.get("preset", "snapkv")
    assert preset.summary == preset.obj.description


def test_extra_plugin_strategies_are_registered_under_the_plugin_name():
    registry = Registry(extra_plugins=[("tests:mine", make_plugin(scorers=[scorer_class("test_mine")]))])
    assert registry.get("scorer", "test_mine").plugin == "tests:mine"
    assert "tests:mine" in registry.plugins()


def test_a_name_may_repeat_across_roles():
    preset = Preset("snapkv_window", "a preset named like a scorer", {"scorer": "snapkv_window"})
    registry = Registry(extra_plugins=[("tests:presets", make_plugin(presets=[preset]))])
    assert registry.get("preset", "snapkv_window").plugin == "tests:presets"
    assert registry.get("scorer", "snapkv_window").plugin == BUILTIN_PLUGINS["scorer"]


# -- duplicate names ----------------------------------------------------------------------------


def test_duplicate_name_error_names_both_plugins():
    plugins = [("plugin-a", make_plugin(scorers=[scorer_class("test_dup")])),
               ("plugin-b", make_plugin(scorers=[scorer_class("test_dup")]))]
    with pytest.raises(DuplicateStrategyError) as info:
        Registry(extra_plugins=plugins)
    message = str(info.value)
    assert "'plugin-a'" in message and "'plugin-b'" in message and "'test_dup'" in message
    assert "scorer" in message and AUTOLOAD_ENV in message
    assert info.value.plugins == ("plugin-a", "plugin-b")


def test_duplicate_of_a_builtin_names_the_builtin_plugin():
    with pytest.raises(DuplicateStrategyError, match=r"'kvpress-lab:scorers'.*'intruder'"):
        Registry(extra_plugins=[("intruder", make_plugin(scorers=[scorer_class("snapkv_window")]))])


def test_duplicate_preset_names_both_plugins():
    preset = Preset("test-dup", "twice")
    with pytest.raises(DuplicateStrategyError, match=r"preset name 'test-dup'.*'first'.*'second'"):
        Registry(extra_plugins=[("first", make_plugin(presets=[preset])), ("second", make_plugin(presets=[preset]))])


# -- unknown names ------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "typo", "expected"), [("allocator", "unifrom", "uniform"), ("executor", "gathr", "gather"),
                                                         ("scorer", "snapkv_windwo", "snapkv_window"), ("preset", "snapvk", "snapkv")])
def test_unknown_name_suggests_the_closest_and_lists_all(role, typo, expected):
    registry = Registry()
    with pytest.raises(UnknownStrategyError) as info:
        registry.get(role, typo)
    message = str(info.value)
    assert f"Unknown {role} {typo!r}. Did you mean {expected!r}?" in message
    for name in registry.names(role):
        assert repr(name) in message
    assert info.value.suggestion == expected
    assert isinstance(info.value, ValueError)


def test_unknown_name_without_a_close_match_only_lists():
    with pytest.raises(UnknownStrategyError) as info:
        Registry().get("allocator", "zzzzzz")
    assert "Did you mean" not in str(info.value) and "'uniform'" in str(info.value)
    assert info.value.suggestion is None


def test_unknown_role_lists_the_roles():
    with pytest.raises(ValueError, match="role must be one of allocator, scorer, executor, preset, got 'scorers'"):
        Registry().names("scorers")


# -- the autoload switch --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_autoload_switch_hides_third_party_plugins_but_keeps_builtins(monkeypatch, value):
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    registry = Registry()
    assert not registry.autoload
    assert EXAMPLE_PLUGIN not in registry.plugins()
    assert "example_recency" not in registry.names("scorer")
    assert "example-streaming" not in registry.names("preset")
    assert sorted(BUILTIN_PLUGINS.values()) == registry.plugins()
    assert "snapkv_window" in registry.names("scorer") and "uniform" in registry.names("allocator")


@pytest.mark.parametrize("value", [None, "", "0"])
def test_autoload_is_on_by_default(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    else:
        monkeypatch.setenv(AUTOLOAD_ENV, value)
    registry = Registry()
    assert EXAMPLE_PLUGIN in registry.plugins()
    assert registry.get("scorer", "example_recency").plugin == EXAMPLE_PLUGIN


def test_explicit_autoload_argument_overrides_the_environment(monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    assert EXAMPLE_PLUGIN not in Registry(autoload=False).plugins()
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert EXAMPLE_PLUGIN in Registry(autoload=True).plugins()


@pytest.mark.parametrize("value", ["on", "ON", " On ", "TRUE", " yes\n", "1 "])
def test_every_truthy_spelling_disables_autoload(monkeypatch, value):
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    registry = Registry()
    assert not registry.autoload
    assert EXAMPLE_PLUGIN not in registry.plugins()


@pytest.mark.parametrize("value", ["off", "OFF", " Off ", "False", " NO ", " 0 ", "  "])
def test_every_falsy_spelling_keeps_autoload(monkeypatch, value):
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    registry = Registry()
    assert registry.autoload
    assert registry.get("scorer", "example_recency").plugin == EXAMPLE_PLUGIN


@pytest.mark.parametrize("value", ["2", "maybe", "disable", "y", "of"])
def test_an_unrecognised_autoload_value_raises_naming_the_variable_value_and_choices(monkeypatch, value):
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    with pytest.raises(ValueError) as info:
        Registry()
    message = str(info.value)
    assert AUTOLOAD_ENV in message and repr(value) in message
    for accepted in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        assert f"{accepted}," in message or f"{accepted} " in message, accepted
    assert "empty" in message
    assert isinstance(info.value, kvpress_lab.ConfigurationError) and isinstance(info.value, kvpress_lab.KVPressLabError)
    assert Registry(autoload=False).autoload is False  # an explicit argument never reads the variable


def test_the_command_line_reports_an_unrecognised_autoload_value_in_one_line(monkeypatch, capsys):
    from kvpress_lab import cli
    import kvpress_lab.registry as registry_module

    monkeypatch.setattr(registry_module, "_REGISTRY", None)  # built again, from the environment
    monkeypatch.setenv(AUTOLOAD_ENV, "maybe")
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvpress-lab list: error: {AUTOLOAD_ENV}='maybe' is not understood.") and err.count("\n") == 1


def test_unknown_name_says_third_party_plugins_are_off_when_the_variable_disables_them(monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, " Yes ")
    with pytest.raises(UnknownStrategyError) as info:
        Registry().get("scorer", "example_recency")
    message = str(info.value)
    assert message.startswith("Unknown scorer 'example_recency'.") and "'snapkv_window'" in message
    assert f"third-party plugins are not loaded ({AUTOLOAD_ENV}=Yes); unset it to load installed plugins." in message
    assert info.value.autoload_note is not None and info.value.autoload_note in message


def test_unknown_name_says_third_party_plugins_are_off_when_the_registry_was_built_without_them(monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    with pytest.raises(UnknownStrategyError, match=r"third-party plugins are not loaded \(autoload=False\)"):
        Registry(autoload=False).get("preset", "example-streaming")


@pytest.mark.parametrize(("env", "autoload"), [(None, None), ("off", None), ("1", True)])
def test_unknown_name_does_not_mention_autoload_when_it_is_on(monkeypatch, env, autoload):
    if env is None:
        monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    else:
        monkeypatch.setenv(AUTOLOAD_ENV, env)
    with pytest.raises(UnknownStrategyError) as info:
        Registry(autoload=autoload).get("scorer", "zzzzzz")
    assert "third-party" not in str(info.value) and AUTOLOAD_ENV not in str(info.value)
    assert info.value.autoload_note is None


# -- third-party distributions, through real entry points ----------------------------------------


def install_fake_distribution(root, dist: str, entry_point: str, module: str, source: str | None) -> None:
    """Write ``<dist>-1.0.dist-info`` (and ``<module>.py``) under ``root``, as pip would."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[kvpress_lab]\n{entry_point} = {module}\n")
    if source is not None:
        (root / f"{module}.py").write_text(textwrap.dedent(source))


SCORER_MODULE = """
    from dataclasses import dataclass
    from typing import ClassVar
    from kvpress_lab import hookimpl

    @dataclass(frozen=True)
    class FakeScorer:
        \"\"\"A scorer from an installed distribution.\"\"\"
        name: ClassVar[str] = "test_fake"
        def score(self, view):
            raise NotImplementedError

    @hookimpl
    def kvpress_lab_register_scorers():
        return [FakeScorer]
"""


def test_installed_distribution_is_loaded_from_its_entry_point(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "fake-dist-one", "main", "kvpress_lab_test_fake_one", SCORER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    assert Registry().get("scorer", "test_fake").plugin == "fake-dist-one:main"
    assert "test_fake" not in Registry(autoload=False).names("scorer")


def test_two_installed_distributions_clashing_are_both_named(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "fake-dist-a", "main", "kvpress_lab_test_fake_a", SCORER_MODULE)
    install_fake_distribution(tmp_path, "fake-dist-b", "main", "kvpress_lab_test_fake_b", SCORER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    with pytest.raises(DuplicateStrategyError) as info:
        Registry()
    assert set(info.value.plugins) == {"fake-dist-a:main", "fake-dist-b:main"}


def test_a_plugin_that_fails_to_import_is_named_and_can_be_switched_off(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "fake-broken", "oops", "kvpress_lab_test_no_such_module", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    with pytest.raises(PluginError) as info:
        Registry()
    message = str(info.value)
    assert "'fake-broken:oops'" in message and "kvpress_lab_test_no_such_module" in message
    assert "ModuleNotFoundError" in message and AUTOLOAD_ENV in message
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert "snapkv_window" in Registry().names("scorer")


# -- plugins registering wrong things ------------------------------------------------------------


def allocator_class(scope: object) -> type:
    @dataclass(frozen=True)
    class _Allocator:
        """An allocator with a given scope."""

        name: ClassVar[str] = "test_scoped"

        def allocate(self, request):  # pragma: no cover
            raise NotImplementedError

    if scope is not None:
        _Allocator.scope = scope
    return _Allocator


@pytest.mark.parametrize(
    ("hooks", "fragments"),
    [
        ({"scorers": [NotADataclass]}, ["NotADataclass", "as a scorer", "must be dataclass classes"]),
        ({"scorers": [scorer_class("test_instance")()]}, ["as a scorer", "must be dataclass classes"]),
        ({"scorers": [NoName]}, ["NoName", "with name None", "class attribute `name`"]),
        ({"scorers": [scorer_class("Bad Name")]}, ["with name 'Bad Name'", "class attribute `name` matching"]),
        ({"scorers": [NoScore]}, ["NoScore", "no `score` method required by the scorer protocol"]),
        ({"executors": [ExecutorWithoutBuildLayer]}, ["no `build_layer` method required by the executor protocol"]),
        ({"allocators": [allocator_class("sometimes")]}, ["`scope` must be one of", "got 'sometimes'"]),
        ({"allocators": [allocator_class(None)]}, ["`scope` must be one of", "got None"]),
        ({"presets": [{"name": "test-preset"}]}, ["as a preset", "kvpress_lab.Preset instances"]),
        ({"scorers": NoScore}, ["kvpress_lab_register_scorers() must return a list, got type"]),
        ({"scorers": "test_name"}, ["kvpress_lab_register_scorers() must return a list, got str"]),
        ({"presets": 3}, ["kvpress_lab_register_presets() must return a list, got int"]),
    ],
)
def test_plugins_registering_wrong_things_raise_plugin_error(hooks, fragments):
    with pytest.raises(PluginError) as info:
        Registry(extra_plugins=[("broken", make_plugin(**hooks))])
    message = str(info.value)
    assert "'broken'" in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, TypeError)


def test_misspelled_hook_raises_plugin_error_listing_the_hooks():
    plugin = types.SimpleNamespace(kvpress_lab_register_scorer=hookimpl(lambda: []))
    with pytest.raises(PluginError) as info:
        Registry(extra_plugins=[("typo", plugin)])
    message = str(info.value)
    assert "'typo'" in message and "unknown hook 'kvpress_lab_register_scorer'" in message
    assert "kvpress_lab_register_scorers" in message


def test_hook_with_arguments_the_spec_lacks_raises_plugin_error():
    @hookimpl
    def kvpress_lab_register_scorers(model):
        return []

    plugin = types.SimpleNamespace(kvpress_lab_register_scorers=kvpress_lab_register_scorers)
    with pytest.raises(PluginError, match=r"(?s)Plugin 'extra-arg' does not match kvpress_lab's hook specifications.*'model'"):
        Registry(extra_plugins=[("extra-arg", plugin)])


def test_hooks_returning_none_are_ignored():
    registry = Registry(extra_plugins=[("quiet", make_plugin(scorers=None))])
    assert "snapkv_window" in registry.names("scorer")


@pytest.fixture(autouse=True)
def _forget_fake_modules():
    """Fake plugin modules are imported from tmp_path: drop them so no test sees another's."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("kvpress_lab_test_"):
            del sys.modules[name]


def test_source_tree_without_metadata_falls_back_to_the_builtin_modules(monkeypatch):
    """Run from a source tree that was never installed (no kvpress-lab entry points): built-ins still load."""
    import importlib.metadata

    import kvpress_lab.registry as registry_module

    real = importlib.metadata.entry_points

    def without_kvpress_lab(**kwargs):
        return [ep for ep in real(**kwargs) if ep.dist is None or ep.dist.name.replace("_", "-").lower() != "kvpress-lab"]

    monkeypatch.setattr(importlib.metadata, "entry_points", without_kvpress_lab)
    registry = Registry(autoload=False)
    assert set(registry.plugins()) == {f"kvpress-lab:{short}" for short in registry_module.BUILTIN_MODULES}
    assert registry.names("executor") == ["chunk", "gather", "merge", "merge_ragged", "ragged"]
    assert "pyramidkv" in registry.names("preset") and "snapkv_window" in registry.names("scorer")
