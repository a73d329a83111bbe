"""Terminal tables of the command line: reST markup dropped, the last column wrapped to the terminal.

Imports nothing heavy: ``kvpress-lab list`` uses it without importing torch.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Sequence

__all__ = ["plain_text", "wrapped_table"]

#: ``:role:`target``` or ``:role:`title <target>```, with an optional ``~`` (show the last dotted name).
_ROLE = re.compile(r":[\w.:-]+:`(~?)([^`<]*?)\s*(?:<([^>`]*)>)?`")
#: Narrowest last column laid out beside the others; narrower terminals get it on lines of its own.
_MIN_LAST_COLUMN = 40


def plain_text(text: str) -> str:
    """``text`` (a docstring's first line) without reST markup, for a terminal.

    >>> plain_text("Merge with :func:`~kvpress_lab.executors.merge_evicted_values`, ``W`` = window, see `docs <https://x.org>`_.")
    'Merge with merge_evicted_values, W = window, see docs.'
    """

    def role(match: re.Match[str]) -> str:
        tilde, title, target = match.groups()
        if target is not None and title:  # :role:`title <target>`
            return title
        name = title.strip()
        return name.rsplit(".", 1)[-1] if tilde else name

    text = _ROLE.sub(role, text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    text = re.sub(r"`([^`<]+?)\s*<[^>`]*>`_{1,2}", r"\1", text)  # `title <url>`_
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    return text


def wrapped_table(rows: Sequence[Sequence[str]], width: int | None = None) -> str:
    """Rows as left-aligned columns, the last one wrapped so that no line is longer than ``width``.

    Parameters
    ----------
    rows : sequence of sequences of str
        The header first; every row has the same number of cells.
    width : int, optional
        Line length at most; default the terminal's width (``$COLUMNS``, else 100 when not a terminal).
        When fewer than 40 characters would be left for the last column, it goes under each row,
        indented by 4, instead of beside it.

    Examples
    --------
    >>> print(wrapped_table([("NAME", "SUMMARY"), ("a", "one two three four five six")], width=50))
    NAME  SUMMARY
    a     one two three four five six
    """
    width = width or shutil.get_terminal_size((100, 24)).columns
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    indent = sum(widths) + 2 * len(widths)
    beside = width - indent >= _MIN_LAST_COLUMN
    lines = []
    for row in rows:
        head = "  ".join(cell.ljust(w) for cell, w in zip(row, widths))
        if beside:
            wrapped = textwrap.wrap(row[-1], width - indent) or [""]
            lines.append(f"{head}  {wrapped[0]}".rstrip())
            lines += [" " * indent + line for line in wrapped[1:]]
        else:
            lines.append(head.rstrip())
            lines += ["    " + line for line in textwrap.wrap(row[-1], max(width - 4, 20))]
    return "\n".join(lines)
