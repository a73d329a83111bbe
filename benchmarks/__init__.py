"""Benchmarks of kvpress_lab (installed as ``kvpress_lab.benchmarks``), run through ``kvpress-lab``.

- :mod:`.demo`: needle in a haystack on the embedded model, full cache vs compressed (``kvpress-lab demo``);
- :mod:`.needle`, :mod:`.ruler`, :mod:`.longbench`, :mod:`.speed`: the tasks of ``kvpress-lab bench``;
- :mod:`.generation`: one prompt with or without a recipe, query-aware or query-agnostic, timed;
- :mod:`.sweep`: recipes x budgets x samples, resumable and shardable; :mod:`.results`: result files;
- :mod:`.plot` and :mod:`.tables`: heatmaps, budget curves and terminal tables.

Nothing is imported here, so importing one module does not pull in the others (or matplotlib).
"""
