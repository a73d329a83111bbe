"""The subcommand registry: a :class:`Command` per subcommand, registered once by name.

Each subcommand is a module of :mod:`kvpress_lab.cli` that defines ``COMMAND = Command(...)``;
:mod:`kvpress_lab.cli` registers it with one :func:`register_command` line. Nothing here, nor in
a subcommand module at import, imports torch: the parser is built without them, and each
subcommand's options are added only when it is the one parsed (:mod:`kvpress_lab.cli.app`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command", "COMMANDS", "register_command"]


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line help, how it adds its arguments, and its handler.

    Parameters
    ----------
    help : str
        One line shown by ``kvpress-lab --help``.
    add_arguments : Callable[[argparse.ArgumentParser], None]
        Adds the subcommand's options to its parser.
    run : Callable[[argparse.Namespace], int]
        The handler; returns the process exit status.
    examples : tuple of str
        Command lines shown under "examples:" at the end of the subcommand's ``--help``.
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: tuple[str, ...] = ()


#: Subcommands by name, in ``--help`` order (registration order).
COMMANDS: dict[str, Command] = {}


def register_command(name: str, command: Command) -> Command:
    """Add subcommand ``name`` (last in ``--help``); returns ``command``.

    Raises
    ------
    ValueError
        ``name`` is registered already.
    """
    if name in COMMANDS:
        raise ValueError(f"kvpress-lab already has a subcommand {name!r}; subcommands: {', '.join(COMMANDS)}.")
    COMMANDS[name] = command
    return command
