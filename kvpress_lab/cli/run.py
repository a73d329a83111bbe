"""``kvpress-lab run``: compress one prompt's cache, print the answer, the cache size before/after and timings."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from kvpress_lab.cli import values
from kvpress_lab.cli.command import Command
from kvpress_lab.cli.options import add_long_context_arguments, add_model_arguments, check_long_context_flags

__all__ = ["COMMAND", "add_arguments", "check_flags", "run", "run_recipe", "run_result"]

#: Flags of ``run`` that shape the recipe, as ``(flag, dest)``; none of them works with ``--full``.
RECIPE_FLAGS = (("--scorer", "scorer"), ("--executor", "executor"), ("--window", "window"),
                ("--budget", "budget"), ("--ratio", "ratio"), ("--prefill-chunk", "prefill_chunk"),
                ("--decode-budget", "decode_budget"), ("--compress-every", "compress_every"),
                ("--no-compress-prefill", "compress_prefill"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    size.add_argument("--budget", type=values.int_at_least(1, "--budget"), help="cache entries kept per layer (default 128)")
    size.add_argument("--ratio", type=values.ratio, help="fraction of the prompt's entries to remove, in [0, 1)")
    parser.add_argument("--window", type=values.int_at_least(1, "--window"), help="observation window W (default: the recipe's)")
    parser.add_argument("--mode", choices=("query-aware", "query-agnostic"), default="query-aware",
                        help="query-aware: compress prompt + question; query-agnostic: compress the prompt, then append "
                             "--question")
    parser.add_argument("--chat", action="store_true", help="wrap prompt + question in the tokenizer's chat template")
    parser.add_argument("--max-new-tokens", type=values.int_at_least(1, "--max-new-tokens"), default=64,
                        help="greedy-decoded tokens at most")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (answer, recipe, cache report, timings) instead of text")
    add_long_context_arguments(parser)
    add_model_arguments(parser, seed=False)  # greedy decoding of the user's prompt: nothing is seeded


def check_flags(args: argparse.Namespace) -> None:
    """Flags that conflict or would do nothing together are usage errors (exit status 2); checked once, first."""
    from kvpress_lab.benchmarks.input_errors import UsageError

    if args.full:
        given = [flag for flag, dest in RECIPE_FLAGS if getattr(args, dest) is not None]
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


def run_recipe(args: argparse.Namespace, echo: Any = None) -> Any:
    """The recipe of ``kvpress-lab run``: ``--preset`` with overrides, or one built from ``--allocator``.

    On a preset, ``--scorer``, ``--executor``, ``--window``, ``--budget`` and ``--ratio`` go through
    :func:`~kvpress_lab.recipe_labels.recipe_for` (:meth:`Recipe.preset <kvpress_lab.Recipe.preset>`'s
    override rules, the same as from Python); each change of a field the preset sets is reported by
    ``echo`` (default: a line on stderr) as :meth:`Recipe.preset_changes <kvpress_lab.Recipe.preset_changes>`
    words it, e.g. ``overriding preset snapkv: scorer=h2o (was snapkv_window; ...)``.
    """
    from kvpress_lab import Recipe
    from kvpress_lab.benchmarks.commands import BenchmarkInputError, decoding_overrides
    from kvpress_lab.errors import KVPressLabError
    from kvpress_lab.recipe_labels import CacheSize, recipe_for

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    fields = {key: getattr(args, dest) for dest, key in (("scorer", "scorer"), ("executor", "executor"), ("window", "window"))
              if getattr(args, dest, None) is not None}
    fields.update(decoding_overrides(args))
    try:
        size = CacheSize(budget=getattr(args, "budget", None), ratio=getattr(args, "ratio", None))
        if args.preset is None:
            return Recipe(**{"allocator": args.allocator or "uniform", "scorer": "snapkv_window", **size.recipe_fields(),
                             **fields})
        recipe = recipe_for(args.preset, size, **fields)
    except KVPressLabError:
        raise
    except (TypeError, ValueError) as exc:
        raise BenchmarkInputError(str(exc)) from exc
    notes = Recipe.preset_changes(args.preset, **{**{k: fields[k] for k in ("scorer", "executor", "window") if k in fields},
                                                  **size.recipe_fields(), **decoding_overrides(args)})
    if notes:
        echo(f"overriding preset {args.preset}: {', '.join(notes)}")
    return recipe


def _prompt(args: argparse.Namespace) -> str:
    from kvpress_lab.benchmarks.commands import BenchmarkInputError

    if args.prompt_file is None:
        prompt = args.prompt
    else:
        path = pathlib.Path(args.prompt_file)
        if not path.is_file():
            raise BenchmarkInputError(f"--prompt-file {path} does not exist.")
        try:
            prompt = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchmarkInputError(f"--prompt-file {path} cannot be read as UTF-8 text: {exc}.") from None
    if not prompt:
        raise BenchmarkInputError("Give a prompt: kvpress-lab run 'text ...' or --prompt-file FILE.")
    return prompt


def run(args: argparse.Namespace) -> int:
    """One recipe on one prompt: answer, cache size before/after, timings."""
    from kvpress_lab.benchmarks import commands
    from kvpress_lab.benchmarks.generation import generate_answer

    check_flags(args)
    if args.scorer is not None and args.allocator is None and args.preset is None:
        args.allocator = "uniform"
    if args.preset is None and args.allocator is None and not args.full:
        args.preset = "pyramidkv"
    prompt = _prompt(args)
    recipe = None if args.full else run_recipe(args)
    commands.check_flags_fit_recipes(args, [recipe])
    commands.check_model_arguments(args)
    model, tokenizer = commands.load(args)
    question = args.question or ""
    if args.chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt + question}], tokenize=False,
                                               add_generation_prompt=True)
        question = ""
    result = generate_answer(model, tokenizer, recipe, prompt, question, mode=args.mode,
                             max_new_tokens=args.max_new_tokens, prefill_chunk=getattr(args, "prefill_chunk", None))
    if getattr(args, "json", False):
        print(json.dumps(run_result(args, recipe, result), indent=2))
    else:
        _report(args, recipe, result)
    return 0


def _report(args: argparse.Namespace, recipe: Any, result: Any) -> None:
    """The answer on stdout; the recipe, cache sizes and timings on stderr."""
    from kvpress_lab.benchmarks.tables import human_bytes

    report = result.cache
    print(result.text.strip())
    print("-" * 60, file=sys.stderr)
    label = "full cache" if recipe is None else (recipe.preset_name or f"{recipe.allocator}+{recipe.scorer}")
    print(f"recipe        {label}: {'-' if recipe is None else recipe.to_json()}", file=sys.stderr)
    print(f"prompt        {result.prompt_tokens} tokens, {args.mode}", file=sys.stderr)
    if report is not None:
        print(f"KV cache      {human_bytes(report.uncompressed_bytes)} before -> {human_bytes(report.total_bytes)} "
              f"after ({100 * report.ratio:.1f}%, uncompressed size computed from the shapes)", file=sys.stderr)
    print(f"prefill       {result.prefill_s:.2f} s" + (" (compression included)" if recipe else ""), file=sys.stderr)
    if args.mode == "query-agnostic":
        print(f"question      {result.question_s:.2f} s", file=sys.stderr)
    print(f"decoding      {1000 * result.decode_step_s:.1f} ms/token over {result.new_tokens} tokens", file=sys.stderr)
    if report is not None:
        print("", file=sys.stderr)
        print(report.table(), file=sys.stderr)


def run_result(args: argparse.Namespace, recipe: Any, result: Any) -> dict[str, Any]:
    """The JSON document of ``kvpress-lab run --json``: answer, recipe, cache report and timings.

    ``recipe`` is ``null`` for ``--full``; ``cache`` is :meth:`CacheReport.to_dict
    <kvpress_lab.cache_reports.CacheReport.to_dict>` of the cache right after prefill; times are
    seconds (``decode_step_s`` is ``null`` when no decoding step ran).
    """
    import math

    decode = result.decode_step_s
    return {
        "answer": result.text.strip(),
        "model": args.model,
        "mode": args.mode,
        "recipe": None if recipe is None else json.loads(recipe.to_json()),
        "prompt_tokens": result.prompt_tokens,
        "new_tokens": result.new_tokens,
        "cache": None if result.cache is None else result.cache.to_dict(),
        "timings": {
            "prefill_s": result.prefill_s,
            "question_s": result.question_s,
            "decode_step_s": None if decode is None or math.isnan(decode) else decode,
        },
    }


COMMAND = Command("compress one prompt's cache: answer, cache size before/after, timings", add_arguments, run,
                  ("kvpress-lab run 'The capital of France is'",
                   "kvpress-lab run --prompt-file doc.txt --question ' Who wrote it?' --preset snapkv --budget 64",
                   "kvpress-lab run --prompt-file doc.txt --mode query-agnostic --question ' Summary:' --ratio 0.75",
                   "kvpress-lab run --prompt-file doc.txt --full --json > full.json"))
