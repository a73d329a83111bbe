"""``kvpress-lab demo``: needle in a haystack on the embedded model, full cache vs compressed caches
(:mod:`kvpress_lab.benchmarks.demo`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from kvpress_lab.cli import values
from kvpress_lab.cli.command import Command
from kvpress_lab.cli.options import add_model_arguments, add_share_arguments, resolve_budgets

__all__ = ["COMMAND", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kvpress_lab.benchmarks import defaults

    def listed(items: Sequence[Any]) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in items)

    from_list = values.comma_list(values.positive_int, "positive integers")
    parser.add_argument("--out-dir", default="results/demo", help="where the JSON and PNG go (default results/demo)")
    parser.add_argument("--lengths", type=from_list, default=list(defaults.DEFAULT_LENGTHS),
                        help=f"prompt tokens, each >= 64 (default {listed(defaults.DEFAULT_LENGTHS)})")
    parser.add_argument("--depths", type=values.comma_list(values.depth, "depths in [0, 1]"),
                        default=list(defaults.DEFAULT_DEPTHS), help=f"needle depths (default {listed(defaults.DEFAULT_DEPTHS)})")
    parser.add_argument("--budgets", type=from_list, help=f"entries per layer (default {listed(defaults.DEFAULT_BUDGETS)})")
    parser.set_defaults(default_budgets=list(defaults.DEFAULT_BUDGETS))
    parser.add_argument("--recipes", type=values.comma_list(str, "preset names"), default=list(defaults.DEFAULT_RECIPES),
                        help=f"presets compared with the full cache (default {listed(defaults.DEFAULT_RECIPES)})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_share_arguments(parser)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Needle in a haystack: full cache vs compressed caches, table + heatmap + JSON."""
    from kvpress_lab.benchmarks import commands
    from kvpress_lab.extras import require_extra

    resolve_budgets(args)
    require_extra("bench", "the demo (its heatmap)", ("matplotlib",))  # its heatmap; checked before the model loads
    from kvpress_lab.benchmarks.demo import run_demo
    from kvpress_lab.benchmarks.sample_groups import share_prefill

    ratios = getattr(args, "ratios", None) or []
    commands.recipe_entries(args.recipes, args.budgets, ratios)  # names and sizes, before the model loads
    share = share_prefill(args)
    commands.check_model_arguments(args)
    commands.check_output_dir("--out-dir", args.out_dir)
    commands.check_needle_lengths(args.lengths)
    model, tokenizer = commands.load(args)
    commands.check_needle_lengths(args.lengths, args.depths, tokenizer, seed=args.seed)
    run_demo(args.model, args.out_dir, lengths=args.lengths, depths=args.depths, budgets=args.budgets,
             recipes=args.recipes, seed=args.seed, progress=not args.no_progress, model=model, tokenizer=tokenizer,
             ratios=ratios, share=share)
    return 0


COMMAND = Command("needle in a haystack on the embedded model: full cache vs compressed", add_arguments, run,
                  ("kvpress-lab demo", "kvpress-lab demo --lengths 1024 --budgets 64 --recipes snapkv,pyramidkv"))
