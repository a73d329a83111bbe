"""``kvpress-lab bench ... --shard / --launcher / --shards / --slurm-*``: which shard runs, or a job array.

Without ``--shard``, a sweep takes its shard from the scheduler's environment when one is set
(:func:`~kvpress_lab.benchmarks.sweep.shard_from_env`: SLURM array tasks, torchrun and
accelerate), else runs every cell. ``--launcher slurm|local --shards N`` submits the N shards as
one job array instead (:mod:`kvpress_lab.benchmarks.launch`).
"""

from __future__ import annotations

import argparse
import sys

from kvpress_lab.cli.values import int_at_least, key_value

__all__ = ["add_launcher_arguments", "resolve_shard", "run_launcher"]


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """``--launcher``, ``--shards``, ``--wait`` and the ``--slurm-*`` job settings of a sweep task."""
    from kvpress_lab.benchmarks.launch import LAUNCHERS, SlurmOptions

    defaults = SlurmOptions()
    group = parser.add_argument_group("job arrays (needs the slurm extra: pip install 'kvpress-lab[slurm]')")
    group.add_argument("--launcher", choices=LAUNCHERS,
                       help="submit --shards jobs, task i running this command with --shard i/N and --out "
                            "<out>.shard<i>-of-<N>.jsonl: slurm = one SLURM array job, local = processes here")
    group.add_argument("--shards", type=int_at_least(1, "--shards"), help="number of jobs with --launcher (default 1)")
    group.add_argument("--wait", action="store_true", help="with --launcher slurm: wait for every job (local always waits)")
    group.add_argument("--slurm-partition", default=defaults.partition, help="partition (default: the cluster's)")
    group.add_argument("--slurm-time", type=int_at_least(1, "--slurm-time"), default=defaults.time_min,
                       help=f"minutes per task, also the local timeout (default {defaults.time_min})")
    group.add_argument("--slurm-gpus", type=int_at_least(0, "--slurm-gpus"), default=defaults.gpus,
                       help=f"GPUs per task (default {defaults.gpus})")
    group.add_argument("--slurm-cpus", type=int_at_least(1, "--slurm-cpus"), help="CPUs per task (default: the cluster's)")
    group.add_argument("--slurm-mem", type=int_at_least(1, "--slurm-mem"), help="memory per task in GB (default: the cluster's)")
    group.add_argument("--slurm-parallelism", type=int_at_least(1, "--slurm-parallelism"),
                       help="array tasks running at once at most (default: no limit)")
    group.add_argument("--slurm-folder", default=defaults.folder,
                       help=f"job pickles and logs, %%j = job id (default {defaults.folder.replace('%', '%%')})")
    group.add_argument("--slurm-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, repeatable, e.g. --slurm-option account=lab (default: none)")


def resolve_shard(args: argparse.Namespace) -> None:
    """Fill in ``args.shard``: ``--shard`` when given, else the scheduler's environment, else ``(0, 1)``.

    Raises
    ------
    UsageError
        ``--shards`` without ``--launcher``.
    BenchmarkInputError
        Scheduler variables that are inconsistent (named in the message).
    """
    from kvpress_lab.benchmarks.commands import BenchmarkInputError, UsageError
    from kvpress_lab.benchmarks.sweep import shard_from_env

    if getattr(args, "shards", None) is not None:
        raise UsageError(f"--shards {args.shards} does nothing without --launcher slurm|local; add --launcher, or use "
                         "--shard i/n to run one shard here.")
    if args.shard is not None:
        return
    try:
        found = shard_from_env()
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from None
    if found is None:
        args.shard = (0, 1)
        return
    args.shard, source = found
    print(f"shard {args.shard[0]}/{args.shard[1]} from the environment ({source}); --shard overrides it.",
          file=sys.stderr, flush=True)


def run_launcher(args: argparse.Namespace) -> int:
    """``--launcher``: check the flags (no model loads here) and submit the shards."""
    from kvpress_lab.benchmarks.commands import UsageError, check_model, check_output_file, recipe_entries
    from kvpress_lab.benchmarks.launch import SlurmOptions, launch_bench

    if args.shard is not None:
        raise UsageError(f"--shard {args.shard[0]}/{args.shard[1]} conflicts with --launcher: the launcher gives every "
                         "job its own --shard i/N; drop --shard, and set the count with --shards N.")
    recipe_entries(args.recipes, args.budgets, window=args.window)  # names and budgets, before anything is submitted
    check_model(args.model)
    check_output_file("--out", args.out or f"results/{args.task}.jsonl")
    options = SlurmOptions(partition=args.slurm_partition, time_min=args.slurm_time, gpus=args.slurm_gpus,
                           cpus=args.slurm_cpus, mem_gb=args.slurm_mem, folder=args.slurm_folder,
                           parallelism=args.slurm_parallelism, extra=dict(args.slurm_option))
    status, _ = launch_bench(args, args.launcher, args.shards or 1, options, wait=args.wait)
    return status
