"""Strategies that break the registration contract, shared by the entry-point and in-process registry tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class NotADataclass:
    """Not a dataclass."""

    name: ClassVar[str] = "test_plain"

    def score(self, view):  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class NoName:
    """No name attribute."""

    def score(self, view):  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class NoScore:
    """Has a name, lacks score()."""

    name: ClassVar[str] = "test_no_score"


@dataclass(frozen=True)
class ExecutorWithoutBuildLayer:
    """Has select(), lacks build_layer()."""

    name: ClassVar[str] = "test_half_executor"

    def select(self, scores, keep, forced, candidates):  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class NoScope:
    """An allocator without scope."""

    name: ClassVar[str] = "test_no_scope"

    def allocate(self, request):  # pragma: no cover
        raise NotImplementedError
