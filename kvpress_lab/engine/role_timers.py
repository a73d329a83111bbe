"""Opt-in timers around the roles of a compression: scoring, allocation, selection and gather.

A :class:`~kvpress_lab.engine.session.CompressionSession` times its roles only when a
:class:`RoleTimers` is given to it (``CompressionSession(..., timers=RoleTimers())``) or when the
model is inside :func:`time_roles` (which also reaches the sessions that
:func:`~kvpress_lab.engine.shared_prefill.compress_many` creates for itself). Off, a session's role call costs one
``is None`` test; on, every role call is bracketed by ``time.perf_counter`` and, on CUDA, by a
device synchronisation (so the time is the role's, not the time to queue its kernels).

The roles (:data:`ROLES`):

``score``
    Building the layer's :class:`~kvpress_lab.layer_view.LayerView` (queries of the window,
    rotary tables) and the scorer's ``score`` / ``forced_keep``, plus the engine's checks on them.
``allocate``
    The budget plan (:func:`~kvpress_lab.engine.planning.plan_budgets`), a global allocator's layer
    statistics, the forced-fit check and adaptive per-head budgets.
``select``
    The executor's ``select`` (top-k of the scores under the budgets).
``gather``
    The executor's ``build_layer`` (gathering the kept keys and values into the new cache layer).

Examples
--------
>>> timers = RoleTimers()
>>> with timers.time("score"):
...     pass
>>> sorted(timers.seconds) == sorted(ROLES) and timers.seconds["score"] >= 0.0
True
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["ROLES", "RoleTimers", "RoleTimerLog", "time_roles", "timers_for"]

#: The timed roles, in pipeline order.
ROLES: tuple[str, ...] = ("score", "allocate", "select", "gather")

_MODEL_ATTR = "_kvpress_lab_role_timer_log"


class RoleTimers:
    """Seconds spent inside each role (``seconds[role]``) and how many times it ran (``calls[role]``).

    Parameters
    ----------
    device : torch.device or str or None
        Synchronised before and after each timed call when it is a CUDA device.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = None if device is None else torch.device(device)
        self.seconds: dict[str, float] = dict.fromkeys(ROLES, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(ROLES, 0)

    @contextlib.contextmanager
    def time(self, role: str) -> Iterator[None]:
        """Add the time of the ``with`` block to ``seconds[role]``.

        Raises
        ------
        ValueError
            ``role`` is not one of :data:`ROLES`.
        """
        if role not in self.seconds:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}.")
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[role] += time.perf_counter() - start
            self.calls[role] += 1

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def total(self) -> float:
        """Seconds inside every role together."""
        return sum(self.seconds.values())

    def as_dict(self) -> dict[str, float]:
        """``{"score_s": ..., "allocate_s": ..., "select_s": ..., "gather_s": ..., "roles_s": total}``."""
        return {**{f"{role}_s": self.seconds[role] for role in ROLES}, "roles_s": self.total}


class RoleTimerLog:
    """The :class:`RoleTimers` of every session created on a model inside :func:`time_roles`, in creation order.

    ``entries`` holds ``(recipe, timers)`` pairs: one per
    :class:`~kvpress_lab.engine.session.CompressionSession`, so one per recipe of a
    :func:`~kvpress_lab.engine.shared_prefill.compress_many` call, in the order of its ``recipes``.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.entries: list[tuple[Any, RoleTimers]] = []

    def new(self, recipe: Any) -> RoleTimers:
        """A fresh :class:`RoleTimers` for a session of ``recipe``, logged."""
        timers = RoleTimers(self.device)
        self.entries.append((recipe, timers))
        return timers


@contextlib.contextmanager
def time_roles(model: torch.nn.Module) -> Iterator[RoleTimerLog]:
    """Time the roles of every compression session created on ``model`` inside the block.

    Yields a :class:`RoleTimerLog`; blocks do not nest on one model.

    Raises
    ------
    RuntimeError
        ``model`` is already inside a ``time_roles`` block.
    """
    if getattr(model, _MODEL_ATTR, None) is not None:
        raise RuntimeError("time_roles is already active on this model; exit that block first.")
    device = next(iter(model.parameters()), torch.empty(0)).device
    log = RoleTimerLog(device)
    setattr(model, _MODEL_ATTR, log)
    try:
        yield log
    finally:
        delattr(model, _MODEL_ATTR)


def timers_for(model: torch.nn.Module, recipe: Any) -> RoleTimers | None:
    """The timers a new session of ``recipe`` on ``model`` records into: ``None`` outside :func:`time_roles`."""
    log = getattr(model, _MODEL_ATTR, None)
    return None if log is None else log.new(recipe)
