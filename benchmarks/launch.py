"""Run one ``bench`` sweep as a job array: one job per shard, through ``submitit`` (optional extra).

``kvpress-lab bench needle ... --launcher slurm --shards 16`` submits **one** SLURM array job of
16 tasks; task ``i`` runs the same bench command with ``--shard i/16`` and writes its own shard
file, ``<out stem>.shard<i>-of-16.jsonl`` (:func:`shard_out`), so no two jobs share a file.
``--launcher local`` runs the same jobs as processes on this machine (submitit's local executor,
all shards at once): the way to try a launch, and what the tests use. Merge the shard files with
``kvpress-lab summarize`` (:mod:`kvpress_lab.benchmarks.summarize`).

``submitit`` is the optional extra ``kvpress-lab[slurm]``; nothing here imports it until a
launch is asked for.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import pathlib
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kvpress_lab.benchmarks.commands import BenchmarkInputError, UsageError, looks_like_path

__all__ = ["LAUNCHERS", "SlurmOptions", "shard_out", "run_shard", "launch_bench"]

#: ``--launcher`` values.
LAUNCHERS: tuple[str, ...] = ("slurm", "local")


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """Job settings; ``None`` leaves the cluster's default.

    Parameters
    ----------
    partition : str or None
        ``--partition`` of every task.
    time_min : int
        Wall-clock limit per task, minutes (also the local executor's timeout).
    gpus : int
        GPUs per task (SLURM only; local jobs see this machine's devices as they are).
    cpus, mem_gb : int or None
        CPUs and memory (GB) per task.
    folder : str
        Where submitit writes each job's pickles and logs (``%j``: the job id).
    parallelism : int or None
        Most array tasks running at once (``--array=...%N``).
    extra : Mapping[str, str]
        Any other ``#SBATCH`` option, e.g. ``{"account": "lab", "qos": "high"}``.
    """

    partition: str | None = None
    time_min: int = 60
    gpus: int = 1
    cpus: int | None = None
    mem_gb: int | None = None
    folder: str = "results/slurm/%j"
    parallelism: int | None = None
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)


def shard_out(out: str | pathlib.Path, index: int, count: int) -> pathlib.Path:
    """The file shard ``index`` of ``count`` writes: ``results/needle.jsonl`` -> ``results/needle.shard3-of-16.jsonl``."""
    out = pathlib.Path(out)
    return out.with_name(f"{out.stem}.shard{index}-of-{count}{out.suffix or '.jsonl'}")


def run_shard(args: argparse.Namespace, shard: tuple[int, int]) -> int:
    """What each job runs: ``bench`` with ``--shard i/n`` and ``--out`` its shard file; returns the exit status."""
    from kvpress_lab.benchmarks.bench import cmd_bench

    args = copy.copy(args)
    args.launcher, args.shard = None, tuple(shard)
    args.out = str(shard_out(args.out, *shard))
    args.no_progress = True  # job logs are files: no progress bars
    if getattr(args, "launched_by", None):  # the meta record's argv: the command that was typed, not submitit's
        sys.argv = list(args.launched_by)
    print(f"kvpress-lab bench {args.task}: shard {shard[0]}/{shard[1]} -> {args.out}", flush=True)
    return cmd_bench(args)


def _absolute(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every path made absolute: jobs may start in another folder (or on another machine)."""
    args = copy.copy(args)
    args.out = str(pathlib.Path(args.out or f"results/{args.task}.jsonl").expanduser().absolute())
    if getattr(args, "data_dir", None):
        args.data_dir = str(pathlib.Path(args.data_dir).expanduser().absolute())
    if looks_like_path(args.model):
        args.model = str(pathlib.Path(args.model).expanduser().absolute())
    return args


def _executor(launcher: str, options: SlurmOptions, name: str) -> Any:
    from kvpress_lab.extras import require_extra

    require_extra("slurm", f"--launcher {launcher}")
    import submitit

    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise BenchmarkInputError("--launcher slurm needs SLURM's sbatch on PATH (run it on a cluster's login node); "
                                  "--launcher local runs the same shards as processes on this machine.")
    folder = pathlib.Path(options.folder).expanduser().absolute()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=launcher)
    settings: dict[str, Any] = {"name": name, "timeout_min": options.time_min}
    if launcher == "slurm":
        settings.update(slurm_gpus_per_node=options.gpus, slurm_additional_parameters=dict(options.extra))
        for key, value in (("slurm_partition", options.partition), ("cpus_per_task", options.cpus),
                           ("mem_gb", options.mem_gb), ("slurm_array_parallelism", options.parallelism)):
            if value is not None:
                settings[key] = value
    executor.update_parameters(**settings)
    return executor


def launch_bench(args: argparse.Namespace, launcher: str, shards: int, options: SlurmOptions | None = None,
                 wait: bool = False) -> tuple[int, list[pathlib.Path]]:
    """Submit ``shards`` jobs (one SLURM array job) running this bench command's shards.

    Parameters
    ----------
    args : argparse.Namespace
        A parsed ``bench needle|ruler|longbench`` command line (budgets resolved).
    launcher : str
        ``"slurm"`` or ``"local"``.
    shards : int
        Number of shards, ``>= 1``.
    options : SlurmOptions or None
        Job settings (default :class:`SlurmOptions()`).
    wait : bool
        Wait for every job (always for ``"local"``).

    Returns
    -------
    tuple of (int, list of pathlib.Path)
        The exit status (0 when every job finished with status 0, or when jobs were only
        submitted) and the shard files, in shard order.

    Raises
    ------
    BenchmarkInputError
        submitit missing, no ``sbatch`` for ``"slurm"``.
    """
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}.")
    if shards < 1:
        raise UsageError(f"--shards must be >= 1, got {shards}.")
    options = options or SlurmOptions()
    args = _absolute(args)
    args.launched_by = list(sys.argv)
    files = [shard_out(args.out, index, shards) for index in range(shards)]
    executor = _executor(launcher, options, f"kvpress-lab-{args.task}")
    jobs = executor.map_array(run_shard, [args] * shards, [(index, shards) for index in range(shards)])
    print(f"Submitted {len(jobs)} {launcher} job{'s' if len(jobs) != 1 else ''} "
          f"({jobs[0].job_id.split('_')[0] if launcher == 'slurm' else ', '.join(j.job_id for j in jobs)}); "
          f"logs in {_log_folders(jobs)}", flush=True)
    summary = f"kvpress-lab summarize {' '.join(_shell_glob(files))}"
    if launcher == "slurm" and not wait:
        _remove_unexpanded_folder(options.folder)
        print(f"When they are done: {summary}")
        return 0, files
    failed = _wait(jobs)
    _remove_unexpanded_folder(options.folder)
    print(f"{len(jobs) - len(failed)} of {len(jobs)} shards finished. Merge them: {summary}")
    return (1 if failed else 0), files


def _log_folders(jobs: Sequence[Any]) -> str:
    """The jobs' log folders, ``%j`` expanded to each job id (one folder per SLURM array, one per local job)."""
    folders = list(dict.fromkeys(str(job.paths.folder) for job in jobs))
    return folders[0] if len(folders) == 1 else ", ".join(folders)


def _remove_unexpanded_folder(folder: str) -> None:
    """Remove the empty folder named with a literal ``%j`` that submitit creates before jobs have ids."""
    path = pathlib.Path(folder).expanduser().absolute()
    parts = path.parts
    for depth, part in enumerate(parts):
        if "%j" in part:
            literal = pathlib.Path(*parts[: depth + 1])
            try:
                literal.rmdir()  # only when empty: a user's own folder that happens to hold files stays
            except OSError:
                pass
            return


def _wait(jobs: Sequence[Any]) -> list[int]:
    """Indices of the jobs that failed (their error and log file printed on stderr)."""
    failed = []
    for index, job in enumerate(jobs):
        try:
            status = job.result()
        except Exception as exc:  # submitit re-raises the job's error (FailedJobError, UncompletedJobError)
            print(f"shard {index}: job {job.job_id} failed: {_reason(exc)} "
                  f"(log: {job.paths.stderr})", file=sys.stderr)
            failed.append(index)
            continue
        if status:
            print(f"shard {index}: job {job.job_id} exited with status {status} (log: {job.paths.stdout})",
                  file=sys.stderr)
            failed.append(index)
    return failed


def _reason(exc: BaseException) -> str:
    """The job's own error line (``RuntimeError: ...``) out of submitit's report, which ends with log paths."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
    return errors[-1] if errors else (lines[0] if lines else type(exc).__name__)


def _shell_glob(files: Sequence[pathlib.Path]) -> list[str]:
    """The shard files as one glob when they share a folder (``.../needle.shard*-of-16.jsonl``)."""
    first = files[0]
    if len(files) > 1 and all(f.parent == first.parent for f in files):
        stem = first.name.split(".shard", 1)[0]
        return [str(first.parent / f"{stem}.shard*-of-{len(files)}{first.suffix}")]
    return [str(f) for f in files]
