"""How ``--help`` looks: every option's default shown, and the examples block (reST for the docs).

The documentation renders the same parser (:func:`kvpress_lab.cli.docs_parser`); inside
:func:`rst_examples` each example becomes a console block of its own.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["epilog", "rst_examples"]  # HelpFormatter: used by the parser, not part of the API

_RST = [False]  # whether epilog() writes reST (one console block per example, for the docs)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line; descriptions and example epilogs kept as written.

    An option whose help already states its default (``... (default 128)``) is left alone, as
    are defaults that mean "not given" (``None``, ``False``).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if (text is None or text is argparse.SUPPRESS or not action.option_strings or default in (None, False)
                or default is argparse.SUPPRESS or "default" in text or isinstance(action, argparse._VersionAction)):
            return text
        return f"{text} (default: {_shown_default(default)})"


def _shown_default(value: Any) -> str:
    """A default as it would be typed on the command line (lists comma-separated), ``%``-escaped for argparse."""
    if isinstance(value, (list, tuple)):
        value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value).replace("%", "%%")


def epilog(examples: Sequence[str]) -> str | None:
    """The ``examples:`` block of a ``--help`` (reST console blocks inside :func:`rst_examples`)."""
    if not examples:
        return None
    if _RST[0]:
        return "Examples:\n\n" + "\n\n".join(f".. code-block:: console\n\n   $ {line}" for line in examples)
    return "examples:\n" + "\n".join(f"  {line}" for line in examples)


@contextlib.contextmanager
def rst_examples() -> Iterator[None]:
    """Inside the block, :func:`epilog` writes reST (what the docs' CLI page renders)."""
    _RST[0] = True
    try:
        yield
    finally:
        _RST[0] = False
