"""``--model_args`` -> :class:`~kvpress_lab.Recipe`: a preset name or a recipe JSON file, with field overrides.

Needs no lm-eval: the argument rules are tested on their own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from kvpress_lab.recipe import Recipe

__all__ = ["NO_COMPRESSION", "build_recipe"]

#: ``recipe=`` values meaning "no compression" (the plain ``hf`` model).
NO_COMPRESSION = ("full", "none")


def build_recipe(
    recipe: str | Recipe | None = None,
    recipe_json: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Recipe | None:
    """The recipe of ``--model_args``: a preset name or a recipe JSON file, with field overrides.

    Parameters
    ----------
    recipe : str, Recipe or None
        A preset name (``kvpress-lab list --role preset``), ``"full"`` / ``"none"`` / ``None``
        for no compression, or a :class:`~kvpress_lab.Recipe`.
    recipe_json : str, path, mapping or None
        A file holding :meth:`Recipe.to_json <kvpress_lab.Recipe.to_json>` (``model_args`` are
        comma-separated, so JSON text cannot be inlined there), or its dict. Excludes ``recipe``.
    **overrides
        :class:`~kvpress_lab.Recipe` fields (``budget``, ``compression_ratio``, ``window``, ...);
        ``None`` values are ignored.

    Returns
    -------
    Recipe or None
        ``None``: no compression.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if recipe is not None and recipe_json is not None:
        raise ValueError(f"Give recipe= or recipe_json=, not both; got recipe={recipe!r} and recipe_json={recipe_json!r}.")
    if recipe_json is not None:
        if isinstance(recipe_json, Mapping):
            data = dict(recipe_json)
        elif isinstance(recipe_json, (str, os.PathLike)):
            data = _read_recipe_file(recipe_json)
        else:
            raise TypeError(f"recipe_json must be a path to a recipe JSON file or a dict, got {type(recipe_json).__name__}.")
        if "compression_ratio" in overrides and "budget" not in overrides:
            data.pop("budget", None)
        return Recipe.from_dict({**data, **overrides})
    if isinstance(recipe, Recipe):
        return Recipe.from_dict({**recipe.to_dict(), **overrides}) if overrides else recipe
    if recipe is None or (isinstance(recipe, str) and recipe.lower() in NO_COMPRESSION):
        if overrides:
            raise ValueError(
                f"{', '.join(sorted(overrides))} given without a recipe (recipe={recipe!r} means no compression); "
                "add recipe=<preset> (e.g. recipe=pyramidkv) or recipe_json=<file>."
            )
        return None
    if not isinstance(recipe, str):
        raise TypeError(f"recipe must be a preset name, a Recipe or None, got {type(recipe).__name__}: {recipe!r}.")
    return Recipe.preset(recipe, **overrides)


def _read_recipe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in ``path``; a missing file, invalid JSON or a non-object is an error naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"recipe_json={os.fspath(path)!r}: no such file (write one with Recipe.to_json()).") from None
    except IsADirectoryError:
        raise ValueError(f"recipe_json={os.fspath(path)!r} is a folder; pass the recipe's JSON file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"recipe_json={os.fspath(path)!r} is not valid JSON ({exc}); write it with Recipe.to_json().") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"recipe_json={os.fspath(path)!r} holds a JSON {type(data).__name__}, not an object of Recipe fields "
                         "(as Recipe.to_json() writes).")
    return dict(data)
