"""``kvpress-lab eval CONFIG.yaml``: a whole evaluation from one configuration file.

The configuration (:mod:`kvpress_lab.benchmarks.eval_config`) names the model, recipes, sizes,
modes, tasks and output folder; :mod:`kvpress_lab.benchmarks.evaluate` runs it. Building this
parser imports neither torch nor transformers (``kvpress-lab --help`` stays fast).
"""

from __future__ import annotations

import argparse

from kvpress_lab.cli.command import Command

__all__ = ["COMMAND", "EXAMPLES", "add_eval_arguments", "run_eval_command"]

#: ``kvpress-lab eval --help`` examples.
EXAMPLES = ("kvpress-lab eval results/docs/ruler/eval.yaml",
            "kvpress-lab eval my-eval.yaml --dry-run",
            "kvpress-lab eval my-eval.yaml --shard 0/4")


def _shard(text: str) -> tuple[int, int]:
    from kvpress_lab.benchmarks.sweep import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG``, ``--shard``, ``--dry-run``, ``--no-progress``."""
    parser.add_argument("config", help="the evaluation's YAML file (see the how-to 'Evaluate from a configuration file')")
    parser.add_argument("--shard", type=_shard,
                        help="run only cells with index %% n == i, given as i/n (default: from SLURM_ARRAY_TASK_ID/_COUNT "
                             "or RANK/WORLD_SIZE when set, else every cell); every shard appends to the same results file")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the configuration, print the resolved one and the number of cells, run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (overrides the file's progress)")


def run_eval_command(args: argparse.Namespace) -> int:
    """Read, check and run (or with ``--dry-run`` only show) the configuration."""
    import dataclasses

    from kvpress_lab.benchmarks.eval_config import read_config

    config = read_config(args.config)
    if args.no_progress:
        config = dataclasses.replace(config, progress=False)
    if args.dry_run:
        import yaml

        from kvpress_lab.benchmarks.evaluate import plan_recipes

        entries = plan_recipes(config)  # recipe names and fields, checked
        print(yaml.safe_dump(config.resolved(), sort_keys=False), end="")
        print(f"# {len(entries)} recipe x size entries, {len(config.tasks)} task entries; nothing ran (--dry-run).")
        return 0
    if config.launcher is not None:
        from kvpress_lab.benchmarks.eval_launch import launch_eval

        if args.shard is not None:
            from kvpress_lab.benchmarks.input_errors import UsageError

            raise UsageError(f"--shard {args.shard[0]}/{args.shard[1]} conflicts with the configuration's launcher, which "
                             "gives every job its own shard; drop --shard or the launcher section.")
        return launch_eval(args.config, config)
    if args.shard is None:
        from kvpress_lab.cli.launch import resolve_shard

        args.shards = None
        resolve_shard(args)
    from kvpress_lab.benchmarks.evaluate import run_eval

    run_eval(config, shard=args.shard)
    return 0


COMMAND = Command("a whole evaluation from a YAML file: tasks (lm-eval, needle, ruler, ...) x recipes x sizes x modes",
                  add_eval_arguments, run_eval_command, EXAMPLES)
