"""An evaluation configuration's ``launcher:`` section: its shards as one job array (SLURM or local processes).

Every job runs :func:`~kvpress_lab.benchmarks.evaluate.run_eval` on its shard ``i/N`` of the
same configuration and appends to the same ``results.jsonl`` (appends are locked, so shards can
share the file); when the jobs are done (``wait: true``, always for ``local``), ``summary.csv``
is written from every shard's rows. Reuses :mod:`~kvpress_lab.benchmarks.launch`'s executor.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys

from kvpress_lab.benchmarks.eval_config import EvalConfig

__all__ = ["launch_eval", "run_eval_shard"]


def run_eval_shard(config: EvalConfig, shard: tuple[int, int], argv: list[str]) -> int:
    """What each job runs: shard ``shard`` of ``config``; 0 on success."""
    from kvpress_lab.benchmarks.evaluate import run_eval

    sys.argv = list(argv)  # the meta record's argv: the command that was typed
    run_eval(dataclasses.replace(config, progress=False, launcher=None), shard=tuple(shard))
    return 0


def launch_eval(config_path: str | os.PathLike[str], config: EvalConfig) -> int:
    """Submit ``config.launcher.shards`` jobs; wait for them when asked (always for ``local``); the exit status."""
    from kvpress_lab.benchmarks.evaluate import plan_recipes, write_outputs
    from kvpress_lab.benchmarks.launch import SlurmOptions, _executor, _log_folders, _remove_unexpanded_folder, _wait

    launcher = config.launcher
    plan_recipes(config)  # names and fields, before anything is submitted
    output = str(pathlib.Path(config.output).expanduser().absolute())  # jobs may start in another folder
    config = dataclasses.replace(config, output=output)
    options = SlurmOptions(partition=launcher.partition, time_min=launcher.time, gpus=launcher.gpus, cpus=launcher.cpus,
                           mem_gb=launcher.mem, folder=launcher.folder, parallelism=launcher.parallelism,
                           extra=dict(launcher.options))
    executor = _executor(launcher.kind, options, f"kvpress-lab-eval-{pathlib.Path(config_path).stem}")
    shards = [(index, launcher.shards) for index in range(launcher.shards)]
    jobs = executor.map_array(run_eval_shard, [config] * len(shards), shards, [list(sys.argv)] * len(shards))
    print(f"Submitted {len(jobs)} {launcher.kind} job{'s' if len(jobs) != 1 else ''}; logs in {_log_folders(jobs)}; "
          f"results in {output}/results.jsonl", flush=True)
    if launcher.kind == "slurm" and not launcher.wait:
        _remove_unexpanded_folder(options.folder)
        print(f"When they are done: python -c \"from kvpress_lab.benchmarks.evaluate import write_outputs; "
              f"write_outputs('{output}')\" writes summary.csv (or rerun kvpress-lab eval {config_path}: finished "
              "cells are skipped)")
        return 0
    failed = _wait(jobs)
    _remove_unexpanded_folder(options.folder)
    print(f"{len(jobs) - len(failed)} of {len(jobs)} shards finished.")
    write_outputs(output)
    return 1 if failed else 0
