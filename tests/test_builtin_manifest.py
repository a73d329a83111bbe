"""``kvpress_lab/builtin_manifest.json``: the built-ins ``kvpress-lab list`` shows without importing torch.

If the first test fails, a built-in strategy or preset changed: regenerate the file with
``python -m kvpress_lab.builtin_manifest`` (and commit it).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest

from kvpress_lab import DuplicateStrategyError, hookimpl
from kvpress_lab.builtin_manifest import MANIFEST_PATH, fast_listing, generate, live_listing, load
from kvpress_lab.registry import AUTOLOAD_ENV, Registry

REGENERATE = "stale: run `python -m kvpress_lab.builtin_manifest` and commit kvpress_lab/builtin_manifest.json"


def test_the_shipped_manifest_equals_the_live_registry():
    shipped = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    assert shipped == generate(), REGENERATE
    assert load() == shipped  # its digest matches the sources: list uses it


@pytest.fixture
def fresh(tmp_path):
    """A manifest generated now (the mechanism is tested whether or not the shipped file is current)."""
    path = tmp_path / "builtin_manifest.json"
    path.write_text(json.dumps(generate()), encoding="utf-8")
    return path


def test_fast_listing_equals_the_live_listing(fresh):
    for autoload in (True, False):
        fast = fast_listing(Registry(builtins=False, autoload=autoload), path=fresh)
        live = live_listing(Registry(autoload=autoload))
        assert fast is not None and fast.from_manifest, REGENERATE
        assert (fast.rows, fast.plugins, fast.autoload) == (live.rows, live.plugins, live.autoload)
    assert any(row["plugin"] == "kvpress-lab-example-plugin:example"
               for row in fast_listing(Registry(builtins=False), path=fresh).rows)


def test_a_manifest_older_than_the_sources_is_not_used(tmp_path):
    stale = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    stale["sources_sha256"] = "0" * 64
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(stale))
    assert load(path) is None and fast_listing(Registry(builtins=False), path=path) is None
    path.write_text("{not json")
    assert load(path) is None
    assert load(tmp_path / "missing.json") is None


@dataclass(frozen=True)
class _Impostor:
    """A third-party scorer taking a built-in name."""

    name: ClassVar[str] = "snapkv_window"

    def score(self, view):
        raise NotImplementedError


class _ClashingPlugin:
    @hookimpl
    def kvpress_lab_register_scorers(self):
        return [_Impostor]


def test_a_third_party_name_clash_with_a_built_in_is_an_error(fresh):
    third_party = Registry([("impostor", _ClashingPlugin())], builtins=False, autoload=False)
    with pytest.raises(DuplicateStrategyError, match="snapkv_window.*kvpress-lab:scorers.*impostor"):
        fast_listing(third_party, path=fresh)


def _fresh_list(env: dict[str, str]) -> tuple[list[dict], list[str]]:
    probe = (
        "import json, sys\n"
        "from kvpress_lab.cli import main\n"
        "status = main(['list', '--json'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)\n"
        "print('\\n' + json.dumps({'status': status, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True,
                            env={**os.environ, **env})
    body, _, last = result.stdout.rstrip("\n").rpartition("\n")
    probe_result = json.loads(last)
    assert probe_result["status"] == 0
    return json.loads(body), probe_result["heavy"]


def test_list_imports_no_torch_when_no_third_party_plugin_does():
    assert load() is not None, REGENERATE  # a fresh process reads the shipped file
    rows, heavy = _fresh_list({AUTOLOAD_ENV: "1"})
    assert heavy == []
    assert rows == list(live_listing(Registry(autoload=False)).rows)


def test_list_in_a_fresh_process_shows_the_live_registry_third_party_included():
    rows, heavy = _fresh_list({AUTOLOAD_ENV: "0"})
    assert rows == list(live_listing(Registry()).rows)
    try:
        importlib.metadata.distribution("kvpress-lab-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        return
    assert heavy == []  # the example plugin imports torch only where it scores, so listing it stays fast
