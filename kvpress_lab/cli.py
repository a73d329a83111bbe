"""The ``kvpress-lab`` command line.

One subcommand per job, each a ``_cmd_<name>(args) -> int`` handler plus an
``_add_<name>_arguments(parser)`` function, registered once in :data:`COMMANDS`. To add a
subcommand (``run``, ``bench``, ``demo``, ...), write those two functions and add one
:class:`Command` entry; :func:`main` builds the parser from the table.

Examples
--------
.. code-block:: console

    $ kvpress-lab list
    $ kvpress-lab list --role scorer --json
    $ kvpress-lab demo
    $ kvpress-lab run --prompt-file doc.txt --preset pyramidkv --budget 128
    $ kvpress-lab bench needle --lengths 1024,2048 --budgets 64,128 --shard 0/2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from kvpress_lab import __version__
from kvpress_lab.cli_values import int_at_least as _int_at_least
from kvpress_lab.cli_values import shown as _shown
from kvpress_lab.errors import KVPressLabError
from kvpress_lab.registry import AUTOLOAD_ENV, ROLES, get_registry

__all__ = ["Command", "COMMANDS", "DTYPES", "build_parser", "docs_parser", "exit_status", "main"]

#: The ``--dtype`` values: floating-point weight dtypes a model can be loaded in.
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``<prog>: error: <message>``, exit status 2.

    argparse prefixes a type error with ``argument --flag:``; the types below already start
    their message with the flag, so that prefix is dropped rather than naming the flag twice.
    """

    def error(self, message: str) -> NoReturn:
        match = re.match(r"argument (\S+): (.*)", message, flags=re.DOTALL)
        if match and match.group(2).startswith(match.group(1) + " "):
            message = match.group(2)
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(text: str) -> str:
    """``text`` with its lines joined by spaces (error messages are one line on stderr)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
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


#: Whether :func:`_epilog` writes reST (one console block per example, for the docs) instead of plain text.
_RST_EPILOGS = False


def _epilog(examples: Sequence[str]) -> str | None:
    """The ``examples:`` block of a ``--help`` (reST console blocks while :func:`docs_parser` builds)."""
    if not examples:
        return None
    if _RST_EPILOGS:
        return "Examples:\n\n" + "\n\n".join(f".. code-block:: console\n\n   $ {line}" for line in examples)
    return "examples:\n" + "\n".join(f"  {line}" for line in examples)


class _LazySubParsers(argparse._SubParsersAction):
    """Subparsers whose options are added only when their command is the one being parsed.

    ``kvpress-lab --help``, ``--version`` and ``list`` then never run the other commands'
    ``add_arguments`` (which import torch, transformers and the benchmarks).
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


# ---------------------------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------------------------


def _add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=ROLES, help="show only this role (default: every role)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def _fast_listing() -> Any:
    """Built-ins from :mod:`kvpress_lab.builtin_manifest` (no torch), or ``None`` to list the live registry.

    ``None`` also when this process already built its registry or registered strategies in-process
    (:func:`kvpress_lab.register`): listing it then costs nothing and shows those too.
    """
    from kvpress_lab.builtin_manifest import fast_listing
    from kvpress_lab.registry import process_registry_in_use

    return None if process_registry_in_use() else fast_listing()


def _cmd_list(args: argparse.Namespace) -> int:
    """Print every registered strategy and preset with the plugin that provided it.

    The built-ins come from the manifest while it matches their sources (``kvpress-lab list``
    then imports no torch); otherwise, and when this process already built its registry, from
    the live registry. Third-party plugins are always loaded live.
    """
    from kvpress_lab.builtin_manifest import live_listing

    listing = _fast_listing() or live_listing(get_registry())
    rows = [row for row in listing.rows if args.role is None or row["role"] == args.role]
    if args.json:
        print(json.dumps(rows, indent=2, default=repr))
        return 0
    from kvpress_lab.cli_table import plain_text, wrapped_table

    # Summaries are docstring first lines: reST markup dropped, wrapped to the terminal's width.
    table = [("ROLE", "NAME", "PLUGIN", "SUMMARY")] + [
        (row["role"], row["name"], row["plugin"], plain_text(row["summary"])) for row in rows
    ]
    print(wrapped_table(table))
    autoload = "on" if listing.autoload else f"off ({AUTOLOAD_ENV})"
    closing = f"{len(rows)} entries from plugins: {', '.join(listing.plugins)}; third-party autoload {autoload}."
    print("\n" + textwrap.fill(closing, shutil.get_terminal_size((100, 24)).columns, break_on_hyphens=False))
    return 0


# ---------------------------------------------------------------------------------------------
# run, bench, demo, plot (handlers in kvpress_lab.benchmarks, imported when a command runs)
# ---------------------------------------------------------------------------------------------

_BENCH_RECIPES = "full,streamingllm,h2o,snapkv,pyramidkv"


def _comma_list(kind: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    """argparse type for ``a,b,c`` lists whose items parse with ``kind``."""

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


def _integer(flag: str) -> Callable[[str], int]:
    """argparse type: any integer; the error names ``flag``."""

    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {_shown(text)}") from None

    parse.__name__ = "integer"
    return parse


def _ratio(text: str) -> float:
    """argparse type of ``--ratio``: a fraction in ``[0, 1)``."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--ratio must be a number in [0, 1), got {_shown(text)}")
    return value


def _device(text: str) -> str:
    """argparse type of ``--device``: ``auto`` or a device string ``torch.device`` parses (cpu, cuda:1, ...)."""
    from kvpress_lab.benchmarks.commands import parse_device

    try:
        return parse_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device_map(text: str) -> str | dict[str, Any]:
    """argparse type of ``--device-map``: an accelerate strategy or a JSON module -> device mapping."""
    from kvpress_lab.benchmarks.commands import parse_device_map

    try:
        return parse_device_map(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shard(text: str) -> tuple[int, int]:
    from kvpress_lab.benchmarks.sweep import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


def _positive_int(text: str) -> int:
    """Item type of the ``--budgets``/``--lengths`` lists (the list type reports the error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _depth(text: str) -> float:
    """Item type of the ``--depths`` list (the list type reports the error)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def _add_model_arguments(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    """``--model --device --dtype --attn`` (and ``--seed`` where the command generates prompts)."""
    from kvpress_lab.models import EMBEDDED_MODEL_NAME

    parser.add_argument("--model", default=EMBEDDED_MODEL_NAME,
                        help="embedded model name (default), local checkpoint folder or hub id")
    parser.add_argument("--device", type=_device, default="auto",
                        help="auto (default: cuda when available, else cpu), cpu, cuda, cuda:1, mps, ...")
    parser.add_argument("--dtype", default="float32", choices=(*DTYPES, "auto"),
                        help="float32 (default), bfloat16, float16 or auto (the checkpoint's dtype)")
    parser.add_argument("--device-map", type=_device_map,
                        help="let from_pretrained place the weights: auto (spread over the visible GPUs), balanced, "
                             "sequential, or a JSON object / .json file of module -> device; not with --device")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                        help="attention implementation (default sdpa; flash_attention_2 needs a GPU and flash-attn)")
    if seed:
        parser.add_argument("--seed", type=_integer("--seed"), default=0, help="seed of the generated prompts (default 0)")


def _add_long_context_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prefill-chunk``, ``--decode-budget``, ``--compress-every``, ``--no-compress-prefill`` (see docs/howto/long-contexts)."""
    parser.add_argument("--prefill-chunk", type=_int_at_least(1, "--prefill-chunk"), metavar="C",
                        help="prefill the compressed part in chunks of C tokens, compressing after each (each layer "
                             "holds at most its budget + C); the full cache runs unchunked")
    parser.add_argument("--decode-budget", type=_int_at_least(1, "--decode-budget"), metavar="N",
                        help="decoding-time compression: cut each layer back to N entries during generation")
    parser.add_argument("--compress-every", type=_int_at_least(1, "--compress-every"), metavar="K",
                        help="with --decode-budget: re-compress every K generated tokens (default: the recipe's, 16)")
    parser.add_argument("--no-compress-prefill", dest="compress_prefill", action="store_const", const=False,
                        default=None, help="with --decode-budget: leave the prompt uncompressed, compress the generation only")


#: Flags of ``run`` that shape the recipe, as ``(flag, dest)``; none of them works with ``--full``.
_RUN_RECIPE_FLAGS = (("--scorer", "scorer"), ("--executor", "executor"), ("--window", "window"),
                     ("--budget", "budget"), ("--ratio", "ratio"), ("--prefill-chunk", "prefill_chunk"),
                     ("--decode-budget", "decode_budget"), ("--compress-every", "compress_every"),
                     ("--no-compress-prefill", "compress_prefill"))


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help="the prompt text (or use --prompt-file)")
    parser.add_argument("--prompt-file", help="read the prompt from this file")
    parser.add_argument("--question", help="text appended after the compressed part (needed by --mode query-agnostic)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", help="named recipe (see `kvpress-lab list --role preset`); default pyramidkv. "
                                        "--scorer, --executor and --window override its fields (printed)")
    which.add_argument("--allocator", help="allocator name: a recipe from scratch instead of a preset (with --scorer)")
    which.add_argument("--full", action="store_true", help="no compression (reference run); takes no recipe flag")
    parser.add_argument("--scorer", help="scorer name (alone: with the uniform allocator)")
    parser.add_argument("--executor", help="executor name (default: the recipe's; see `kvpress-lab list --role executor`)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--budget", type=_int_at_least(1, "--budget"), help="cache entries kept per layer (default 128)")
    size.add_argument("--ratio", type=_ratio, help="fraction of the prompt's entries to remove, in [0, 1)")
    parser.add_argument("--window", type=_int_at_least(1, "--window"), help="observation window W (default: the recipe's)")
    parser.add_argument("--mode", choices=("query-aware", "query-agnostic"), default="query-aware",
                        help="query-aware: compress prompt + question; query-agnostic: compress the prompt, then append "
                             "--question")
    parser.add_argument("--chat", action="store_true", help="wrap prompt + question in the tokenizer's chat template")
    parser.add_argument("--max-new-tokens", type=_int_at_least(1, "--max-new-tokens"), default=64,
                        help="greedy-decoded tokens at most")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (answer, recipe, cache report, timings) instead of text")
    _add_long_context_arguments(parser)
    _add_model_arguments(parser, seed=False)  # greedy decoding of the user's prompt: nothing is seeded


def _check_run_flags(args: argparse.Namespace) -> None:
    """Flags that conflict or would do nothing together are usage errors (exit status 2)."""
    from kvpress_lab.benchmarks.commands import UsageError, check_long_context_flags

    if args.full:
        given = [flag for flag, dest in _RUN_RECIPE_FLAGS if getattr(args, dest) is not None]
        if given:
            raise UsageError(f"--full conflicts with {' and '.join(given)}: --full runs the uncompressed cache, so "
                             f"{'they' if len(given) > 1 else 'it'} would be ignored; drop {' '.join(given)} or --full.")
    if args.prompt is not None and args.prompt_file is not None:
        raise UsageError("the prompt is given twice, as text and with --prompt-file; give one of them.")
    check_long_context_flags(args)  # --compress-every / --no-compress-prefill need --decode-budget
    if args.mode == "query-agnostic":
        if args.chat:
            raise UsageError("--chat conflicts with --mode query-agnostic: --chat puts --question inside the chat "
                             "template, so nothing is left to append after compression; drop one of them.")
        if not args.question:
            raise UsageError("--mode query-agnostic needs --question (the text appended after the compressed prompt).")


def _cmd_run(args: argparse.Namespace) -> int:
    """Compress one prompt's cache, print the answer, the cache size before/after and timings."""
    from kvpress_lab.benchmarks.commands import cmd_run

    _check_run_flags(args)
    if args.scorer is not None and args.allocator is None and args.preset is None:
        args.allocator = "uniform"
    if args.preset is None and args.allocator is None and not args.full:
        args.preset = "pyramidkv"
    return cmd_run(args)


def _ratio_item(text: str) -> float:
    """Item type of ``--ratios``: a fraction in ``[0, 1)`` (the list type reports the error)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(text)
    return value


def _add_share_arguments(parser: argparse.ArgumentParser, ratios: bool = True) -> None:
    """``--share-prefill N`` / ``--no-share-prefill`` and (needle, demo) ``--ratios``."""
    from kvpress_lab.benchmarks.defaults import DEFAULT_SHARE

    share = parser.add_mutually_exclusive_group()
    share.add_argument("--share-prefill", type=_int_at_least(1, "--share-prefill"), metavar="N",
                       help=f"compress up to N recipes of a sample from one shared prefill (default {DEFAULT_SHARE}; "
                            "their caches are held at once); 1 = one prefill per cell")
    share.add_argument("--no-share-prefill", action="store_true", help="one prefill per cell (same results, slower)")
    if ratios:
        parser.add_argument("--ratios", type=_comma_list(_ratio_item, "ratios in [0, 1)"),
                            help="compression ratios (fraction of the prompt's entries removed, kvpress's convention), "
                                 "as well as or instead of --budgets")


def _add_sweep_arguments(parser: argparse.ArgumentParser, recipes: str, budgets: str, out: str, seed: bool = True) -> None:
    parser.add_argument("--recipes", type=_comma_list(str, "preset names"), default=recipes.split(","),
                        help=f"presets to compare, 'full' = no compression (default {recipes})")
    parser.add_argument("--budgets", type=_comma_list(_positive_int, "positive integers"),
                        help=f"entries per layer (default {budgets})")
    parser.set_defaults(default_budgets=[int(b) for b in budgets.split(",")])
    parser.add_argument("--window", type=_int_at_least(1, "--window"), help="override every preset's observation window")
    parser.add_argument("--out", help=f"result file (default {out})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_model_arguments(parser, seed=seed)


#: ``kvpress-lab bench <task> --help`` examples.
_BENCH_EXAMPLES: dict[str, tuple[str, ...]] = {
    "needle": ("kvpress-lab bench needle --lengths 1024,2048 --budgets 64,128",
               "kvpress-lab bench needle --recipes full,snapkv --shard 0/2 --out results/needle-0.jsonl"),
    "ruler": ("kvpress-lab bench ruler --tasks niah_single,variable_tracking --lengths 2048 --samples 5",),
    "longbench": ("kvpress-lab bench longbench --data-dir data/longbench --tasks qasper --limit 20",),
    "speed": ("kvpress-lab bench speed --lengths 2048,4096 --budgets 128 --repeats 3",),
    "memory": ("kvpress-lab bench memory --length 8192 --preset snapkv --budget 128 --chunks 256,512",
               "kvpress-lab bench memory --length 256 --decode-budget 128 --compress-every 32 --decode-tokens 1000"),
}


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from kvpress_lab.benchmarks.ruler import TASKS as RULER_TASKS

    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    ints, floats = _comma_list(_positive_int, "positive integers"), _comma_list(_depth, "depths in [0, 1]")
    modes = ("query-aware", "query-agnostic")
    max_new_tokens = _int_at_least(1, "--max-new-tokens")
    for name, help_text in (("needle", "needle in a haystack over lengths x depths (heatmap)"),
                            ("ruler", "RULER-style synthetic tasks, exact match"),
                            ("longbench", "LongBench from the official JSONL files (--data-dir)")):
        task = tasks.add_parser(name, help=help_text, description=help_text, formatter_class=parser.formatter_class,
                                epilog=_epilog(_BENCH_EXAMPLES[name]))
        # LongBench prompts come from the data files: no seed to give.
        _add_sweep_arguments(task, _BENCH_RECIPES, "64,128", f"results/{name}.jsonl", seed=name != "longbench")
        task.add_argument("--shard", type=_shard,
                          help="run only cells with index %% n == i, given as i/n (default: from SLURM_ARRAY_TASK_ID/"
                               "_COUNT or RANK/WORLD_SIZE when set, else 0/1: every cell)")
        _add_launcher_arguments(task)
        task.add_argument("--mode", choices=modes, default="query-aware", help="compress the question too (default) or not")
        _add_long_context_arguments(task)
        _add_share_arguments(task, ratios=name == "needle")
        if name == "needle":
            task.add_argument("--lengths", type=ints, default=[1024, 2048, 4096],
                              help="prompt tokens, each >= 64 (default 1024,2048,4096)")
            task.add_argument("--depths", type=floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="needle depths in [0, 1]")
            task.add_argument("--max-new-tokens", type=max_new_tokens, default=8, help="greedy-decoded tokens at most")
        elif name == "ruler":
            task.add_argument("--tasks", type=_comma_list(str, "task names"), default=list(RULER_TASKS),
                              help=f"some of {','.join(RULER_TASKS)} (default all)")
            task.add_argument("--lengths", type=ints, default=[2048], help="context tokens, each >= 32 (default 2048)")
            task.add_argument("--samples", type=_int_at_least(1, "--samples"), default=5,
                              help="samples per task and length (default 5)")
            task.add_argument("--max-new-tokens", type=max_new_tokens, help="cap on generated tokens (default: per task)")
        else:
            task.add_argument("--data-dir", help="folder of the official <task>.jsonl files")
            task.add_argument("--tasks", type=_comma_list(str, "task names"), help="default: every task file present")
            task.add_argument("--limit", type=_int_at_least(1, "--limit"), help="first N records of each task")
            task.add_argument("--max-length", type=_int_at_least(2, "--max-length"), default=4096,
                              help="prompt tokens; longer prompts are cut in the middle (default 4096)")
            task.add_argument("--chat", choices=("auto", "never"), default="auto",
                              help="auto: chat template where the official script uses one (default)")
            task.add_argument("--max-new-tokens", type=max_new_tokens,
                              help="cap on generated tokens (default: the official per-task length)")
    speed = tasks.add_parser("speed", help="prefill/decoding time, KV bytes and peak memory",
                             description="prefill/decoding time, KV bytes and peak memory",
                             formatter_class=parser.formatter_class, epilog=_epilog(_BENCH_EXAMPLES["speed"]))
    _add_sweep_arguments(speed, "full,pyramidkv,snapkv", "128", "results/speed.json")
    speed.add_argument("--lengths", type=ints, default=[2048, 4096], help="prompt tokens (default 2048,4096)")
    speed.add_argument("--decode-steps", type=_int_at_least(1, "--decode-steps"), default=16,
                       help="decoding steps timed per run")
    speed.add_argument("--repeats", type=_int_at_least(1, "--repeats"), default=1,
                       help="runs per row, median reported (default 1)")
    _add_long_context_arguments(speed)
    memory_help = "peak process memory and KV bytes during prefill and decoding: full, one-shot, chunked, decode budget"
    memory = tasks.add_parser("memory", help=memory_help, description=memory_help, formatter_class=parser.formatter_class,
                              epilog=_epilog(_BENCH_EXAMPLES["memory"]))
    memory.add_argument("--length", type=_int_at_least(2, "--length"), default=4096, help="prompt tokens")
    memory.add_argument("--preset", default="snapkv", help="the compression recipe (see `kvpress-lab list --role preset`)")
    memory.add_argument("--budget", type=_int_at_least(1, "--budget"), default=128, help="entries per layer")
    memory.add_argument("--chunks", type=ints, default=[], help="chunked-prefill settings, one per chunk size (e.g. 256,512)")
    memory.add_argument("--decode-budget", type=_int_at_least(1, "--decode-budget"), metavar="N",
                        help="add the settings 'decode N' and 'decode-only N' (decoding-time compression)")
    memory.add_argument("--compress-every", type=_int_at_least(1, "--compress-every"), metavar="K",
                        help="with --decode-budget: re-compress every K generated tokens (default: the recipe's, 16)")
    memory.add_argument("--decode-tokens", type=_int_at_least(1, "--decode-tokens"), default=32,
                        help="greedy tokens decoded after each prefill (exactly this many)")
    memory.add_argument("--in-process", action="store_true",
                        help="measure every setting in this process (default: each in a fresh one, so that one setting's "
                             "resident memory does not hide the next one's peak)")
    memory.add_argument("--out", help="JSON Lines result file (default results/memory.jsonl)")
    _add_model_arguments(memory)


def _resolve_budgets(args: argparse.Namespace) -> None:
    """``--budgets`` and ``--window`` do nothing when every recipe is ``full``: a usage error.

    Otherwise fill in the default budgets where ``--budgets`` was not given.
    """
    from kvpress_lab.benchmarks.commands import UsageError

    if all(name == "full" for name in args.recipes):
        given = [flag for flag, value in (("--budgets", args.budgets), ("--ratios", getattr(args, "ratios", None)),
                                          ("--window", getattr(args, "window", None))) if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'do' if len(given) > 1 else 'does'} nothing with --recipes "
                             f"{','.join(args.recipes)}: 'full' runs no compression; add a preset to --recipes "
                             f"(e.g. full,snapkv) or drop {' '.join(given)}.")
    if args.budgets is None:  # --ratios alone replaces the default budgets
        args.budgets = [] if getattr(args, "ratios", None) else list(args.default_budgets)


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run one benchmark task; see kvpress_lab.benchmarks.bench."""
    from kvpress_lab.benchmarks.bench import cmd_bench
    from kvpress_lab.benchmarks.commands import check_long_context_flags

    if args.task != "memory":  # memory takes one --preset and --budget, no --recipes/--budgets
        _resolve_budgets(args)
    check_long_context_flags(args)  # --compress-every / --no-compress-prefill need --decode-budget
    if hasattr(args, "shard"):  # the sweep tasks: a job array, or the shard from --shard / the environment
        from kvpress_lab.cli_launch import resolve_shard, run_launcher

        if args.launcher is not None:
            return run_launcher(args)
        resolve_shard(args)
    return cmd_bench(args)


def _add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    from kvpress_lab.cli_launch import add_launcher_arguments

    add_launcher_arguments(parser)


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from kvpress_lab.benchmarks import defaults

    def listed(values: Sequence[Any]) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    from_list = _comma_list(_positive_int, "positive integers")
    parser.add_argument("--out-dir", default="results/demo", help="where the JSON and PNG go (default results/demo)")
    parser.add_argument("--lengths", type=from_list, default=list(defaults.DEFAULT_LENGTHS),
                        help=f"prompt tokens, each >= 64 (default {listed(defaults.DEFAULT_LENGTHS)})")
    parser.add_argument("--depths", type=_comma_list(_depth, "depths in [0, 1]"), default=list(defaults.DEFAULT_DEPTHS),
                        help=f"needle depths (default {listed(defaults.DEFAULT_DEPTHS)})")
    parser.add_argument("--budgets", type=from_list, help=f"entries per layer (default {listed(defaults.DEFAULT_BUDGETS)})")
    parser.set_defaults(default_budgets=list(defaults.DEFAULT_BUDGETS))
    parser.add_argument("--recipes", type=_comma_list(str, "preset names"), default=list(defaults.DEFAULT_RECIPES),
                        help=f"presets compared with the full cache (default {listed(defaults.DEFAULT_RECIPES)})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_share_arguments(parser)
    _add_model_arguments(parser)


def _cmd_demo(args: argparse.Namespace) -> int:
    """Needle in a haystack: full cache vs compressed caches, table + heatmap + JSON."""
    from kvpress_lab.benchmarks.commands import cmd_demo

    _resolve_budgets(args)
    return cmd_demo(args)


def _add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="result files: .json from demo (needle heatmap) and bench speed (time "
                                                 "and KV size against length), .jsonl from bench needle (heatmap), "
                                                 "ruler and longbench (budget-vs-score curves)")
    parser.add_argument("--out", help="PNG to write (default: the first file with .png)")
    parser.add_argument("--task", help="keep only rows of this task (ruler/longbench files)")
    parser.add_argument("--title", help="figure title (default: model, mode and budget of the rows)")


def _cmd_plot(args: argparse.Namespace) -> int:
    """Needle rows -> heatmap; scored rows -> budget-vs-score curves."""
    from kvpress_lab.benchmarks.commands import cmd_plot

    return cmd_plot(args)


def _add_summarize_arguments(parser: argparse.ArgumentParser) -> None:
    from kvpress_lab.cli_summarize import add_summarize_arguments

    add_summarize_arguments(parser)


def _cmd_summarize(args: argparse.Namespace) -> int:
    """Merge shard files of one sweep (see :mod:`kvpress_lab.cli_summarize`)."""
    from kvpress_lab.cli_summarize import run_summarize

    return run_summarize(args)


def _add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    from kvpress_lab.cli_calibrate import add_calibrate_arguments

    add_calibrate_arguments(parser)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit a learned-allocator profile (see :mod:`kvpress_lab.calibration`)."""
    from kvpress_lab.cli_calibrate import run_calibrate

    return run_calibrate(args)


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    from kvpress_lab.cli_eval import add_eval_arguments

    add_eval_arguments(parser)


def _cmd_eval(args: argparse.Namespace) -> int:
    """Run an evaluation configuration (see :mod:`kvpress_lab.cli_eval`)."""
    from kvpress_lab.cli_eval import run_eval_command

    return run_eval_command(args)


# ---------------------------------------------------------------------------------------------
# The command table and entry point
# ---------------------------------------------------------------------------------------------

#: Subcommands by name, in ``--help`` order.
COMMANDS: dict[str, Command] = {
    "list": Command("list registered allocators, scorers, executors and presets", _add_list_arguments, _cmd_list,
                    ("kvpress-lab list", "kvpress-lab list --role scorer", "kvpress-lab list --role preset --json")),
    "run": Command("compress one prompt's cache: answer, cache size before/after, timings", _add_run_arguments, _cmd_run,
                   ("kvpress-lab run 'The capital of France is'",
                    "kvpress-lab run --prompt-file doc.txt --question ' Who wrote it?' --preset snapkv --budget 64",
                    "kvpress-lab run --prompt-file doc.txt --mode query-agnostic --question ' Summary:' --ratio 0.75",
                    "kvpress-lab run --prompt-file doc.txt --full --json > full.json")),
    "bench": Command("benchmarks: needle | ruler | longbench | speed | memory", _add_bench_arguments, _cmd_bench,
                     tuple(line for lines in _BENCH_EXAMPLES.values() for line in lines[:1])),
    "demo": Command("needle in a haystack on the embedded model: full cache vs compressed", _add_demo_arguments, _cmd_demo,
                    ("kvpress-lab demo", "kvpress-lab demo --lengths 1024 --budgets 64 --recipes snapkv,pyramidkv")),
    "plot": Command("result files -> PNG (needle heatmap, budget-vs-score or speed curves)", _add_plot_arguments,
                    _cmd_plot,
                    ("kvpress-lab plot results/demo/needle.json", "kvpress-lab plot results/speed.json",
                     "kvpress-lab plot results/ruler.jsonl --task variable_tracking --out ruler-vt.png")),
    "summarize": Command("merge a sweep's shard files: one table, duplicate and missing cells (exit 3 if missing)",
                         _add_summarize_arguments, _cmd_summarize,
                         ("kvpress-lab summarize results/needle.shard0-of-2.jsonl results/needle.shard1-of-2.jsonl",
                          "kvpress-lab summarize results/ruler-0.jsonl results/ruler-1.jsonl --plot ruler.png")),
    "eval": Command("a whole evaluation from a YAML file: tasks (lm-eval, needle, ruler, ...) x recipes x sizes x modes",
                    _add_eval_arguments, _cmd_eval,
                    ("kvpress-lab eval results/docs/ruler/eval.yaml", "kvpress-lab eval my-eval.yaml --dry-run")),
    "calibrate": Command("fit a per-layer budget profile for the `learned` allocator", _add_calibrate_arguments,
                         _cmd_calibrate,
                         ("kvpress-lab calibrate --out profile.json",
                          "kvpress-lab calibrate --prompts-file prompts.txt --length 2048 --out profile.json")),
}

#: ``kvpress-lab --help`` examples.
_EXAMPLES = ("kvpress-lab list", "kvpress-lab demo", "kvpress-lab run --prompt-file doc.txt --preset pyramidkv --budget 128",
             "kvpress-lab <command> --help")


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The ``kvpress-lab`` parser, one subparser per entry of :data:`COMMANDS`.

    With ``lazy=True`` (what :func:`main` uses) a subcommand's options are added only when that
    subcommand is parsed, so ``--help``, ``--version`` and ``list`` import nothing heavy; the
    default builds every subparser in full (for the docs and for introspection).
    """
    parser = _Parser(prog="kvpress-lab", description="Composable KV-cache compression for transformers models.",
                     formatter_class=_HelpFormatter, epilog=_epilog(_EXAMPLES))
    parser.register("action", "parsers", _LazySubParsers)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help, formatter_class=_HelpFormatter,
                                    epilog=_epilog(command.examples))
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
    global _RST_EPILOGS
    _RST_EPILOGS = True
    try:
        return build_parser()
    finally:
        _RST_EPILOGS = False


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


if __name__ == "__main__":
    raise SystemExit(main())
