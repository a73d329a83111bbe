"""A check run before ``model.generate`` while kvpress_lab hooks are on the model.

Module hooks see one forward pass at a time; some mistakes are only visible from ``generate``'s
arguments (``use_cache=False``, ``cache_implementation="static"``, ``prefill_chunk_size``, a
compressed cache reused for another prompt). :class:`GuardedGenerate` replaces the model
instance's ``generate`` (not the class: other models are untouched) until it is removed. A guard
that cannot be unlinked (something was set over it) becomes inert.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["GenerateCall", "GuardedGenerate"]


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


class GuardedGenerate:
    """``model.generate`` while kvpress_lab hooks are on the model: ``check`` the call, then generate.

    Set as the model *instance*'s ``generate`` attribute by :meth:`install` (the class, and so every
    other model, is untouched). It is a plain object rather than a closure so that
    ``copy.deepcopy(model)`` and ``torch.save(model)`` copy it bound to the copy: the copy's
    ``generate`` runs the copy's weights.

    Parameters
    ----------
    model : nn.Module
        The model whose ``generate`` is guarded.
    check : Callable[[GenerateCall], None]
        Raises to refuse a call.
    previous : Callable or None
        An instance attribute ``generate`` someone set before (called instead of the class's).
    """

    def __init__(self, model: nn.Module, check: Callable[[GenerateCall], None], previous: Callable | None = None):
        self.model = model
        self.check = check
        self.previous = previous
        self.active = True

    @classmethod
    def install(cls, model: nn.Module, check: Callable[[GenerateCall], None]) -> GuardedGenerate | None:
        """Guard ``model.generate``; ``None`` for a model without ``generate`` (a bare decoder)."""
        if getattr(model, "generate", None) is None:
            return None
        guard = cls(model, check, model.__dict__.get("generate"))
        model.__dict__["generate"] = guard
        return guard

    def remove(self) -> None:
        """Stop checking; unlink from the model unless something was set over this guard since."""
        self.active = False
        if self.model.__dict__.get("generate") is self:
            if self.previous is None:
                del self.model.__dict__["generate"]
            else:
                self.model.__dict__["generate"] = self.previous

    @property
    def __wrapped__(self) -> Callable:
        """The ``generate`` this guard calls (``inspect.signature`` follows it)."""
        return self.previous if self.previous is not None else type(self.model).generate.__get__(self.model)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.active:
            self.check(GenerateCall(self.model, args, kwargs))
        return self.__wrapped__(*args, **kwargs)
