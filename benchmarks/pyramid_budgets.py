"""Print PyramidKV's per-layer budgets in both rounding modes (``conserve`` and ``reference``).

Run ``python -m kvpress_lab.benchmarks.pyramid_budgets`` (or ``python benchmarks/pyramid_budgets.py``
from a source checkout); the defaults are the paper's LongBench setting: 32 layers, window 8, a
7500-token prompt, budgets 64, 128 and 2048.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import kvpress_lab
from kvpress_lab.allocators.pyramid import PyramidAllocator
from kvpress_lab.budgets import BudgetRequest

__all__ = ["pyramid_budget_table", "format_table", "main"]

ROUNDINGS = ("conserve", "reference")


def pyramid_budget_table(
    layers: int = 32, budgets: Sequence[int] = (64, 128, 2048), window: int = 8, prompt_length: int = 7500, beta: float = 20
) -> list[dict]:
    """One row per ``(budget, rounding)``: the per-layer budgets, their mean and its excess over the budget.

    >>> rows = pyramid_budget_table(layers=4, budgets=[64], prompt_length=1000)
    >>> [(row["rounding"], row["per_layer"], row["mean"]) for row in rows]
    [('conserve', [117, 82, 46, 11], 64.0), ('reference', [118, 82, 46, 10], 64.0)]
    """
    rows = []
    for budget in budgets:
        request = BudgetRequest(layers, 1, prompt_length, budget, window)
        for rounding in ROUNDINGS:
            per_layer = PyramidAllocator(beta=beta, rounding=rounding).allocate(request)
            mean = sum(per_layer) / layers
            rows.append({
                "budget": budget,
                "rounding": rounding,
                "per_layer": per_layer,
                "mean": mean,
                "excess_pct": 100.0 * (mean - budget) / budget,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text rendering of :func:`pyramid_budget_table`."""
    lines = [f"{'budget':>6}  {'rounding':<9}  {'mean':>9}  {'excess':>7}  per-layer budgets (layer 0 first)"]
    for row in rows:
        lines.append(
            f"{row['budget']:>6}  {row['rounding']:<9}  {row['mean']:>9.2f}  {row['excess_pct']:>+6.2f}%  "
            f"{row['per_layer']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="number of layers L (default 32)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 2048], help="mean budgets per layer")
    parser.add_argument("--window", type=int, default=8, help="observation window w (default 8)")
    parser.add_argument("--prompt-length", type=int, default=7500, help="prompt length T (default 7500)")
    parser.add_argument("--beta", type=float, default=20, help="pyramid steepness (default 20)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows, arguments and version as JSON")
    args = parser.parse_args(argv)
    rows = pyramid_budget_table(args.layers, args.budgets, args.window, args.prompt_length, args.beta)
    print(f"PyramidKV budgets: L={args.layers}, w={args.window}, T={args.prompt_length}, beta={args.beta:g}")
    print(format_table(rows))
    if args.json:
        record = {"kvpress_lab": kvpress_lab.__version__, "arguments": vars(args), "rows": rows}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
