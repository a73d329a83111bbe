"""argparse value types shared by the command-line modules (:mod:`kvpress_lab.cli` and its subcommand modules).

Imports nothing heavy: the CLI's start-up time depends on it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["int_at_least", "shown"]


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
