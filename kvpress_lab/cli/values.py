"""Every argparse value type of the command line, in one module.

A type's error names the flag and what it accepts; argparse turns it into the one-line usage
error (exit status 2). Imports nothing heavy: the CLI's start-up time depends on it (``--device``
and ``--device-map`` import torch only when such a value is parsed).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["shown", "int_at_least", "integer", "comma_list", "positive_int", "depth", "ratio", "ratio_item", "device",
           "device_map", "shard", "key_value"]


def shown(text: str) -> str:
    """A flag value as typed, quoted only when it would otherwise be invisible."""
    return text if text.strip() else repr(text)


def int_at_least(minimum: int, flag: str) -> Callable[[str], int]:
    """argparse type: an integer ``>= minimum``; the error names ``flag`` and the rule.

    >>> int_at_least(1, "--shards")("4")
    4
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer >= {minimum}, got {shown(text)}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def integer(flag: str) -> Callable[[str], int]:
    """argparse type: any integer; the error names ``flag``."""

    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {shown(text)}") from None

    parse.__name__ = "integer"
    return parse


def comma_list(kind: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    """argparse type for ``a,b,c`` lists whose items parse with ``kind`` (which raises ``ValueError`` on a bad item).

    >>> comma_list(positive_int, "positive integers")("64, 128")
    [64, 128]
    """

    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        try:
            return [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}") from None

    parse.__name__ = f"list of {what}"
    return parse


def positive_int(text: str) -> int:
    """Item type of the ``--budgets``/``--lengths`` lists (the list type reports the error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def depth(text: str) -> float:
    """Item type of the ``--depths`` list (the list type reports the error)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def ratio_item(text: str) -> float:
    """Item type of ``--ratios``: a fraction in ``[0, 1)`` (the list type reports the error)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(text)
    return value


def ratio(text: str) -> float:
    """argparse type of ``--ratio``: a fraction in ``[0, 1)``."""
    try:
        return ratio_item(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ratio must be a number in [0, 1), got {shown(text)}") from None


def device(text: str) -> str:
    """argparse type of ``--device``: ``auto`` or a device string ``torch.device`` parses (cpu, cuda:1, ...)."""
    from kvpress_lab.benchmarks.commands import parse_device

    try:
        return parse_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_map(text: str) -> str | dict[str, Any]:
    """argparse type of ``--device-map``: an accelerate strategy or a JSON module -> device mapping."""
    from kvpress_lab.benchmarks.commands import parse_device_map

    try:
        return parse_device_map(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def shard(text: str) -> tuple[int, int]:
    """argparse type of ``--shard``: ``i/n`` with ``0 <= i < n``."""
    from kvpress_lab.benchmarks.sweep import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


def key_value(text: str) -> tuple[str, str]:
    """argparse type of ``--slurm-option``: ``KEY=VALUE``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--slurm-option must look like KEY=VALUE (an sbatch option without --, "
                                         f"e.g. account=lab), got {text!r}")
    return key.strip(), value.strip()
