"""Every optional capability the engine reads is declared once; registration refuses what it would not read.

Also a static check: no ``getattr(obj, "<declared capability>", ...)`` probe anywhere in the
package's core (the engine, the recipe, the budgets): capabilities are read through
:meth:`kvpress_lab.capabilities.Capabilities.of`, which knows the defaults.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from kvpress_lab import capabilities
from kvpress_lab.capabilities import ALLOCATOR, CACHE_LAYER, EXECUTOR, SCORER
from kvpress_lab.errors import PluginError
from kvpress_lab.hookspecs import hookimpl
from kvpress_lab.registry import Registry, get_registry

PACKAGE = Path(capabilities.__file__).resolve().parent


def _registry_with_scorer(cls) -> Registry:
    class Plugin:
        @hookimpl
        def kvpress_lab_register_scorers(self):
            return [cls]

    return Registry(extra_plugins=[("test-plugin", Plugin())], autoload=False)


def _scorer(**members):
    """A valid scorer class with extra class members."""
    namespace = {"__annotations__": {"name": "ClassVar[str]"}, "name": "test_capable",
                 "score": lambda self, view: None, **members}
    return dataclass(frozen=True)(type("CapableScorer", (), namespace))


def test_a_misspelt_class_attribute_is_refused_with_a_suggestion():
    cls = _scorer(chunked_prefil=True)
    with pytest.raises(PluginError, match=r"declares 'chunked_prefil', which is not a scorer capability.*Did you mean "
                                          r"'chunked_prefill'\?"):
        _registry_with_scorer(cls)


def test_an_unknown_classvar_is_refused_even_without_a_close_name():
    cls = _scorer(__annotations__={"name": "ClassVar[str]", "prefers_gpu": "ClassVar[bool]"}, prefers_gpu=True)
    with pytest.raises(PluginError, match="declares 'prefers_gpu', which is not a scorer capability"):
        _registry_with_scorer(cls)


def test_a_misspelt_method_is_refused_but_other_helpers_are_not():
    with pytest.raises(PluginError, match="'forced_kep'.*Did you mean 'forced_keep'"):
        _registry_with_scorer(_scorer(forced_kep=lambda self, view: None))
    registry = _registry_with_scorer(_scorer(helper_for_scoring=lambda self: 1, threshold_table=property(lambda s: 2)))
    assert registry.get("scorer", "test_capable").plugin == "test-plugin"


@pytest.mark.parametrize(("members", "fragment"), [
    ({"chunked_prefill": "yes"}, "'chunked_prefill' must be a bool"),
    ({"needs": "two passes"}, "'needs' must be one of (None, 'reconstruction')"),
    ({"recipe_fields": "compression_ratio"}, "'recipe_fields' must be a tuple"),
    ({"forced_keep": 3}, "'forced_keep' must be a method"),
    ({"accumulates_scores": True}, "declares 'accumulates_scores'.*but not 'score_chunk', which it requires"),
    ({"staged_scores": lambda self, view: None}, "but not 'first_stage_ratio'"),
])
def test_a_declared_value_of_the_wrong_kind_or_without_its_companions_is_refused(members, fragment):
    with pytest.raises(PluginError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        _registry_with_scorer(_scorer(**members))


def test_a_global_allocator_without_a_statistic_is_refused():
    @dataclass(frozen=True)
    class Global:
        name: ClassVar[str] = "test_global"
        scope: ClassVar[str] = "global"

        def allocate(self, request):  # pragma: no cover
            raise NotImplementedError

    class Plugin:
        @hookimpl
        def kvpress_lab_register_allocators(self):
            return [Global]

    with pytest.raises(PluginError, match="neither layer_statistic.*nor scores_statistic"):
        Registry(extra_plugins=[("test-plugin", Plugin())], autoload=False)


def test_reading_an_undeclared_capability_is_an_error():
    with pytest.raises(KeyError, match="'chunked_prefil' is not a declared scorer capability"):
        SCORER.of(object(), "chunked_prefil")
    assert SCORER.of(object(), "chunked_prefill") is False and ALLOCATOR.of(object(), "uses_budget") is True


def test_every_builtin_declares_only_capabilities_of_its_role():
    """The built-ins pass registration; their ClassVars besides the required ones are all declared."""
    for entry in get_registry():
        if entry.role == "preset":
            continue
        table = capabilities.by_role(entry.role)
        declared = {name for klass in entry.obj.__mro__ for name, annotation in vars(klass).get("__annotations__", {}).items()
                    if "ClassVar" in str(annotation)}
        assert declared <= set(table.declared) | set(table.required), (entry.name, declared)


def test_the_tables_have_no_overlap_with_required_members_and_a_meaning_each():
    for table in (SCORER, ALLOCATOR, EXECUTOR, CACHE_LAYER):
        assert not set(table.declared) & set(table.required)
        assert all(len(c.meaning) > 20 for c in table)


def _capability_probes(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """``getattr(x, "<capability>", ...)`` / ``hasattr(x, "<capability>")`` calls in ``path``."""
    names = {c.name for table in (SCORER, ALLOCATOR, EXECUTOR, CACHE_LAYER) for c in table}
    names |= {"prepare_decoding", "kept_counts"}  # cache-layer members: read through is_compressed_layer
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in names):
            found.append(f"{path.relative_to(root)}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_the_core_reads_capabilities_only_through_the_declared_tables():
    core = [*PACKAGE.glob("engine/**/*.py"), PACKAGE / "recipe.py", PACKAGE / "budgets.py", PACKAGE / "head_allocation.py",
            PACKAGE / "registry.py"]
    probes = [probe for path in core for probe in _capability_probes(path)]
    assert not probes, "capabilities probed with getattr/hasattr instead of kvpress_lab.capabilities:\n" + "\n".join(probes)


def test_the_probe_finder_sees_a_planted_probe(tmp_path):
    planted = tmp_path / "session.py"
    planted.write_text("def f(scorer, layer):\n    return getattr(scorer, 'chunked_prefill', False) or hasattr(layer, "
                       "'dense_entries')\n", encoding="utf-8")
    assert _capability_probes(planted, tmp_path) == ["session.py:2 getattr(..., 'chunked_prefill')",
                                                     "session.py:2 hasattr(..., 'dense_entries')"]
