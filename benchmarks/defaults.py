"""Default settings of the benchmark commands, importable without torch.

``kvpress-lab <command> --help`` shows these defaults; keeping them here (and not in the modules
that run the benchmarks) lets the CLI build its parser without importing torch or transformers.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BUDGETS", "DEFAULT_DEPTHS", "DEFAULT_LENGTHS", "DEFAULT_RECIPES", "DEFAULT_SHARE"]

#: Recipes per shared prefill pass by default (``--share-prefill``): their compressed caches are held at once.
DEFAULT_SHARE = 16

#: ``kvpress-lab demo``: prompt lengths (tokens), needle depths, budgets (entries per layer) and presets.
DEFAULT_LENGTHS: tuple[int, ...] = (1024, 2048)
DEFAULT_DEPTHS: tuple[float, ...] = (0.1, 0.5, 0.9)
DEFAULT_BUDGETS: tuple[int, ...] = (64, 128)
DEFAULT_RECIPES: tuple[str, ...] = ("streamingllm", "h2o", "snapkv", "pyramidkv")
