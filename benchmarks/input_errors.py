"""The errors benchmark and CLI inputs raise: a value that cannot work, or flags that conflict.

They live below every benchmark module (re-exported by :mod:`kvpress_lab.benchmarks.commands`),
so any module can raise them without importing the command layer.
"""

from __future__ import annotations

from kvpress_lab.errors import KVPressLabError

__all__ = ["BenchmarkInputError", "UsageError"]


class BenchmarkInputError(KVPressLabError, ValueError):
    """A command-line value that cannot work (budget below the window, missing file, ...); the CLI exits with status 2."""

    exit_status = 2


class UsageError(BenchmarkInputError):
    """Flags that conflict, or that would do nothing together; the CLI exits with status 2."""
