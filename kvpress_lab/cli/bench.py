"""``kvpress-lab bench needle|ruler|longbench|speed|memory``: the benchmarks' options; they run in
:mod:`kvpress_lab.benchmarks.bench`."""

from __future__ import annotations

import argparse

from kvpress_lab.cli import values
from kvpress_lab.cli.command import Command
from kvpress_lab.cli.help_format import epilog
from kvpress_lab.cli.options import (
    add_long_context_arguments, add_model_arguments, add_share_arguments, add_sweep_arguments, check_long_context_flags,
    resolve_budgets,
)

__all__ = ["COMMAND", "EXAMPLES", "add_arguments", "run"]

_RECIPES = "full,streamingllm,h2o,snapkv,pyramidkv"

#: ``kvpress-lab bench <task> --help`` examples.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "needle": ("kvpress-lab bench needle --lengths 1024,2048 --budgets 64,128",
               "kvpress-lab bench needle --recipes full,snapkv --shard 0/2 --out results/needle-0.jsonl"),
    "ruler": ("kvpress-lab bench ruler --tasks niah_single,variable_tracking --lengths 2048 --samples 5",),
    "longbench": ("kvpress-lab bench longbench --data-dir data/longbench --tasks qasper --limit 20",),
    "speed": ("kvpress-lab bench speed --lengths 2048,4096 --budgets 128 --repeats 3",),
    "memory": ("kvpress-lab bench memory --length 8192 --preset snapkv --budget 128 --chunks 256,512",
               "kvpress-lab bench memory --length 256 --decode-budget 128 --compress-every 32 --decode-tokens 1000"),
}

_SWEEPS = (("needle", "needle in a haystack over lengths x depths (heatmap)"),
           ("ruler", "RULER-style synthetic tasks, exact match"),
           ("longbench", "LongBench from the official JSONL files (--data-dir)"))

_INTS = values.comma_list(values.positive_int, "positive integers")
_MAX_NEW_TOKENS = values.int_at_least(1, "--max-new-tokens")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    def task_parser(name: str, text: str) -> argparse.ArgumentParser:
        return tasks.add_parser(name, help=text, description=text, formatter_class=parser.formatter_class,
                                epilog=epilog(EXAMPLES[name]))

    for name, text in _SWEEPS:
        _add_sweep_task(task_parser(name, text), name)
    _add_speed_arguments(task_parser("speed", "prefill/decoding time, KV bytes and peak memory"))
    _add_memory_arguments(task_parser("memory", "peak process memory and KV bytes during prefill and decoding: full, "
                                                "one-shot, chunked, decode budget"))


def _add_sweep_task(task: argparse.ArgumentParser, name: str) -> None:
    """The options of a sweep task (needle, ruler, longbench): shardable, resumable JSON Lines."""
    from kvpress_lab.cli.launch import add_launcher_arguments

    add_sweep_arguments(task, _RECIPES, "64,128", f"results/{name}.jsonl", seed=name != "longbench")  # longbench: files
    task.add_argument("--shard", type=values.shard,
                      help="run only cells with index %% n == i, given as i/n (default: from SLURM_ARRAY_TASK_ID/"
                           "_COUNT or RANK/WORLD_SIZE when set, else 0/1: every cell)")
    add_launcher_arguments(task)
    task.add_argument("--mode", choices=("query-aware", "query-agnostic"), default="query-aware",
                      help="compress the question too (default) or not")
    add_long_context_arguments(task)
    add_share_arguments(task, ratios=name == "needle")
    {"needle": _add_needle_arguments, "ruler": _add_ruler_arguments, "longbench": _add_longbench_arguments}[name](task)


def _add_needle_arguments(task: argparse.ArgumentParser) -> None:
    task.add_argument("--lengths", type=_INTS, default=[1024, 2048, 4096], help="prompt tokens, each >= 64 (default 1024,2048,4096)")
    task.add_argument("--depths", type=values.comma_list(values.depth, "depths in [0, 1]"), default=[0.0, 0.25, 0.5, 0.75, 1.0],
                      help="needle depths in [0, 1]")
    task.add_argument("--max-new-tokens", type=_MAX_NEW_TOKENS, default=8, help="greedy-decoded tokens at most")


def _add_ruler_arguments(task: argparse.ArgumentParser) -> None:
    from kvpress_lab.benchmarks.ruler import TASKS

    task.add_argument("--tasks", type=values.comma_list(str, "task names"), default=list(TASKS),
                      help=f"some of {','.join(TASKS)} (default all)")
    task.add_argument("--lengths", type=_INTS, default=[2048], help="context tokens, each >= 32 (default 2048)")
    task.add_argument("--samples", type=values.int_at_least(1, "--samples"), default=5, help="samples per task and length (default 5)")
    task.add_argument("--max-new-tokens", type=_MAX_NEW_TOKENS, help="cap on generated tokens (default: per task)")


def _add_longbench_arguments(task: argparse.ArgumentParser) -> None:
    task.add_argument("--data-dir", help="folder of the official <task>.jsonl files")
    task.add_argument("--tasks", type=values.comma_list(str, "task names"), help="default: every task file present")
    task.add_argument("--limit", type=values.int_at_least(1, "--limit"), help="first N records of each task")
    task.add_argument("--max-length", type=values.int_at_least(2, "--max-length"), default=4096,
                      help="prompt tokens; longer prompts are cut in the middle (default 4096)")
    task.add_argument("--chat", choices=("auto", "never"), default="auto",
                      help="auto: chat template where the official script uses one (default)")
    task.add_argument("--max-new-tokens", type=_MAX_NEW_TOKENS, help="cap on generated tokens (default: the official per-task length)")


def _add_speed_arguments(speed: argparse.ArgumentParser) -> None:
    add_sweep_arguments(speed, "full,pyramidkv,snapkv", "128", "results/speed.json")
    speed.add_argument("--lengths", type=_INTS, default=[2048, 4096], help="prompt tokens (default 2048,4096)")
    speed.add_argument("--decode-steps", type=values.int_at_least(1, "--decode-steps"), default=16,
                       help="decoding steps timed per run")
    speed.add_argument("--repeats", type=values.int_at_least(1, "--repeats"), default=1,
                       help="runs per row, median reported (default 1)")
    add_long_context_arguments(speed)


def _add_memory_arguments(memory: argparse.ArgumentParser) -> None:
    memory.add_argument("--length", type=values.int_at_least(2, "--length"), default=4096, help="prompt tokens")
    memory.add_argument("--preset", default="snapkv", help="the compression recipe (see `kvpress-lab list --role preset`)")
    memory.add_argument("--budget", type=values.int_at_least(1, "--budget"), default=128, help="entries per layer")
    memory.add_argument("--chunks", type=_INTS, default=[], help="chunked-prefill settings, one per chunk size (e.g. 256,512)")
    memory.add_argument("--decode-budget", type=values.int_at_least(1, "--decode-budget"), metavar="N",
                        help="add the settings 'decode N' and 'decode-only N' (decoding-time compression)")
    memory.add_argument("--compress-every", type=values.int_at_least(1, "--compress-every"), metavar="K",
                        help="with --decode-budget: re-compress every K generated tokens (default: the recipe's, 16)")
    memory.add_argument("--decode-tokens", type=values.int_at_least(1, "--decode-tokens"), default=32,
                        help="greedy tokens decoded after each prefill (exactly this many)")
    memory.add_argument("--in-process", action="store_true",
                        help="measure every setting in this process (default: each in a fresh one, so that one setting's "
                             "resident memory does not hide the next one's peak)")
    memory.add_argument("--out", help="JSON Lines result file (default results/memory.jsonl)")
    add_model_arguments(memory)


def run(args: argparse.Namespace) -> int:
    """Run one benchmark task (:mod:`kvpress_lab.benchmarks.bench`), or submit its shards (``--launcher``)."""
    from kvpress_lab.benchmarks.bench import cmd_bench

    if args.task != "memory":  # memory takes one --preset and --budget, no --recipes/--budgets
        resolve_budgets(args)
    check_long_context_flags(args)  # --compress-every / --no-compress-prefill need --decode-budget
    if hasattr(args, "shard"):  # the sweep tasks: a job array, or the shard from --shard / the environment
        from kvpress_lab.cli.launch import resolve_shard, run_launcher

        if args.launcher is not None:
            return run_launcher(args)
        resolve_shard(args)
    return cmd_bench(args)


COMMAND = Command("benchmarks: needle | ruler | longbench | speed | memory", add_arguments, run,
                  tuple(lines[0] for lines in EXAMPLES.values()))
