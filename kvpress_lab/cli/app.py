"""The ``kvpress-lab`` parser and entry point: one subparser per registered subcommand.

The subcommands are the :class:`~kvpress_lab.cli.command.Command` entries of
:data:`~kvpress_lab.cli.command.COMMANDS` (registered in :mod:`kvpress_lab.cli`); :func:`~kvpress_lab.cli.main`
builds the parser lazily, so a subcommand's options (and whatever they import) are added only
when it is the one parsed.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from kvpress_lab import __version__
from kvpress_lab.cli.command import COMMANDS
from kvpress_lab.cli.help_format import HelpFormatter, epilog, rst_examples
from kvpress_lab.errors import KVPressLabError

__all__ = ["build_parser", "docs_parser", "exit_status", "main"]

#: ``kvpress-lab --help`` examples.
_EXAMPLES = ("kvpress-lab list", "kvpress-lab demo", "kvpress-lab run --prompt-file doc.txt --preset pyramidkv --budget 128",
             "kvpress-lab <command> --help")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``<prog>: error: <message>``, exit status 2.

    argparse prefixes a type error with ``argument --flag:``; the value types already start their
    message with the flag, so that prefix is dropped rather than naming the flag twice.
    """

    def error(self, message: str) -> NoReturn:
        match = re.match(r"argument (\S+): (.*)", message, flags=re.DOTALL)
        if match and match.group(2).startswith(match.group(1) + " "):
            message = match.group(2)
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (error messages are one line on stderr)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


class _LazySubParsers(argparse._SubParsersAction):
    """Subparsers whose options are added only when their command is the one being parsed.

    ``kvpress-lab --help``, ``--version`` and ``list`` then never run the other commands'
    ``add_arguments`` (which import the benchmarks).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, Callable[[], None]] = {}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        fill = self.pending.pop(values[0], None) if values else None
        if fill is not None:
            fill()
        super().__call__(parser, namespace, values, option_string)


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The ``kvpress-lab`` parser, one subparser per entry of :data:`~kvpress_lab.cli.command.COMMANDS`.

    With ``lazy=True`` (what :func:`main` uses) a subcommand's options are added only when that
    subcommand is parsed, so ``--help``, ``--version`` and ``list`` import nothing heavy; the
    default builds every subparser in full (for the docs and for introspection).
    """
    parser = _Parser(prog="kvpress-lab", description="Composable KV-cache compression for transformers models.",
                     formatter_class=HelpFormatter, epilog=epilog(_EXAMPLES))
    parser.register("action", "parsers", _LazySubParsers)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help, formatter_class=HelpFormatter,
                                    epilog=epilog(command.examples))
        sub.set_defaults(handler=command.run)
        if lazy:
            subparsers.pending[name] = functools.partial(command.add_arguments, sub)
        else:
            command.add_arguments(sub)
    return parser


def exit_status(exc: KVPressLabError) -> int:
    """The exit status of a kvpress_lab error: its ``exit_status`` if it has one, 2 for input errors, else 1.

    Input errors are what the user typed or pointed at: unknown strategy names, a model that is
    not found or whose family is unsupported, a profile or calibration input that does not fit,
    an environment variable kvpress_lab cannot read, and every ``BenchmarkInputError`` (missing
    or unreadable files, values that cannot work, unavailable devices).
    """
    from kvpress_lab.errors import ConfigurationError, UnknownStrategyError, UnsupportedModelError
    from kvpress_lab.models.sources import ModelNotFoundError
    from kvpress_lab.profile import ProfileError

    status = getattr(exc, "exit_status", None)
    if status is not None:
        return int(status)
    input_errors = (UnknownStrategyError, ModelNotFoundError, UnsupportedModelError, ProfileError, ConfigurationError)
    return 2 if isinstance(exc, input_errors) else 1


def docs_parser() -> argparse.ArgumentParser:
    """The full parser with each example in a reST console block of its own: what the CLI page renders."""
    with rst_examples():
        return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kvpress-lab`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Every user mistake is one line on stderr, ``kvpress-lab <command>: error: <message>``, and
    exits with status 2: flag values that do not parse (argparse), flags that conflict or would do
    nothing together, and input that cannot work (unknown strategy or model names, files that are
    missing or not what the flag needs, unavailable devices, an unsupported model family); see
    :func:`exit_status`. Other errors raised on purpose by kvpress_lab (an optional dependency or
    the embedded model's package not installed, a broken plugin, a run the engine refuses) return
    status 1. Any other exception is a bug and propagates with its traceback.
    """
    args = build_parser(lazy=True).parse_args(argv)
    try:
        return args.handler(args)
    except KVPressLabError as exc:
        print(f"kvpress-lab {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return exit_status(exc)
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
