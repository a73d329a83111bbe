"""The ``kvpress-lab`` command line: one module per subcommand, registered below, one line each.

The command line stands on the benchmarks (:mod:`kvpress_lab.benchmarks`) and the core; nothing
below imports it. Each subcommand module defines ``COMMAND`` (a :class:`Command`: its help, how it
adds its options, its handler); a new subcommand is a new module and one
:func:`register_command` line here. Building the parser imports neither torch nor transformers:
a subcommand's options are added only when it is the one parsed (:mod:`kvpress_lab.cli.app`).
Argument value types live in :mod:`kvpress_lab.cli.values`, shared option groups and their
checks in :mod:`kvpress_lab.cli.options`.

Examples
--------
.. code-block:: console

    $ kvpress-lab list
    $ kvpress-lab list --role scorer --json
    $ kvpress-lab demo
    $ kvpress-lab run --prompt-file doc.txt --preset pyramidkv --budget 128
    $ kvpress-lab bench needle --lengths 1024,2048 --budgets 64,128 --shard 0/2
    $ kvpress-lab eval results/docs/ruler/eval.yaml
"""

from __future__ import annotations

from kvpress_lab.cli import bench, calibrate, demo, evaluation, listing, plot, run, summarize
from kvpress_lab.cli.app import build_parser, docs_parser, exit_status, main
from kvpress_lab.cli.command import COMMANDS, Command, register_command
from kvpress_lab.cli.options import DTYPES

__all__ = ["Command", "COMMANDS", "DTYPES", "build_parser", "docs_parser", "exit_status", "main", "register_command"]

register_command("list", listing.COMMAND)
register_command("run", run.COMMAND)
register_command("bench", bench.COMMAND)
register_command("demo", demo.COMMAND)
register_command("plot", plot.COMMAND)
register_command("summarize", summarize.COMMAND)
register_command("eval", evaluation.COMMAND)
register_command("calibrate", calibrate.COMMAND)
