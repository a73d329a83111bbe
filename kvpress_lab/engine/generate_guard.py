"""A check run before ``model.generate`` while kvpress_lab hooks are on the model.

Module hooks see one forward pass at a time; some mistakes are only visible from ``generate``'s
arguments (``use_cache=False``, ``cache_implementation="static"``, ``prefill_chunk_size``, a
compressed cache reused for another prompt). :func:`guard_generate` wraps the model instance's
``generate`` (not the class: other models are untouched) until the returned function is called.
Wrappers nest: each removes itself, and a wrapper that cannot be unlinked (something wrapped
over it) becomes inert.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["GenerateCall", "guard_generate"]


class GenerateCall:
    """The arguments of one ``generate`` call, with the generation config's values resolved.

    Parameters
    ----------
    model : nn.Module
        The model ``generate`` was called on.
    args, kwargs : tuple, dict
        As given to ``generate``.
    """

    def __init__(self, model: nn.Module, args: tuple, kwargs: dict):
        self.model = model
        self.args = args
        self.kwargs = kwargs

    @property
    def input_ids(self) -> Any:
        """The prompt ids (first positional argument or ``input_ids``/``inputs``), or ``None``."""
        if self.args:
            return self.args[0]
        return self.kwargs.get("input_ids", self.kwargs.get("inputs"))

    @property
    def cache(self) -> Any:
        """The cache passed in (``cache`` or ``past_key_values``), or ``None``."""
        cache = self.kwargs.get("cache")
        return cache if cache is not None else self.kwargs.get("past_key_values")

    def option(self, name: str) -> Any:
        """``name`` as ``generate`` will see it: keyword, else the passed or the model's generation config."""
        if name in self.kwargs:
            return self.kwargs[name]
        config = self.kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
        return getattr(config, name, None)


def guard_generate(model: nn.Module, check: Callable[[GenerateCall], None]) -> Callable[[], None]:
    """Run ``check`` before every ``model.generate(...)`` call; return the function that removes it.

    ``check`` raises to refuse the call. A model without ``generate`` (a bare decoder) is left alone.
    """
    inner = getattr(model, "generate", None)
    if inner is None:
        return lambda: None
    previous = model.__dict__.get("generate")  # an instance attribute someone set before us, or None
    active = [True]

    @functools.wraps(inner)
    def generate(*args: Any, **kwargs: Any) -> Any:
        if active[0]:
            check(GenerateCall(model, args, kwargs))
        return inner(*args, **kwargs)

    object.__setattr__(model, "generate", generate)

    def remove() -> None:
        active[0] = False
        if model.__dict__.get("generate") is generate:
            if previous is None:
                del model.__dict__["generate"]
            else:
                object.__setattr__(model, "generate", previous)

    return remove
