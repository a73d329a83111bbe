"""A bench shard job on the tiny random Llama and the character tokenizer, for launcher tests.

submitit pickles the job function by reference and runs it in a fresh Python process, where the
test's monkeypatches do not exist: this function sets up the tiny model there, then runs the real
:func:`kvpress_lab.benchmarks.launch.run_shard`. The job process imports it from ``tests/`` (the
test puts that folder on ``PYTHONPATH``).
"""

from __future__ import annotations

from helpers.char_tokenizer import CharTokenizer
from helpers.tiny_models import tiny_model


def run_tiny_shard(args, shard):
    from kvpress_lab.benchmarks import bench, launch

    model, tokenizer = tiny_model("llama", layers=4), CharTokenizer()
    bench.load = lambda parsed: (model, tokenizer)
    return launch.run_shard(args, shard)


def failing_shard(args, shard):
    raise RuntimeError(f"broken shard {shard[0]}")
