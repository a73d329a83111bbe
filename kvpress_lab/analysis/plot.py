"""Plot an attention funnel: entropy and coverage against depth (needs matplotlib, ``kvpress-lab[bench]``).

Colours are from the colour-blind-safe Okabe-Ito palette (blue, orange); the title names the model,
the prompt length and the observation window (the funnel is measured on the full cache: no budget).
"""

from __future__ import annotations

import math
import os
import pathlib

from kvpress_lab.analysis.report import FunnelReport

__all__ = ["plot_funnel"]


def plot_funnel(report: FunnelReport, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write a PNG of ``report``: layer on x; entropy (top) and tokens holding the mass (bottom, log scale) on y.

    Dashed lines mark uniform attention over the whole prompt (``log T`` nats, ``mass * T`` tokens),
    the upper bound a layer would reach if it did not concentrate at all.

    Parameters
    ----------
    report : FunnelReport
        What :func:`~kvpress_lab.analysis.attention_funnel` returned.
    path : str or os.PathLike
        Output file; parent folders are created.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from kvpress_lab.extras import require_extra

    require_extra("bench", "plot_funnel", ("matplotlib",))
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    length = sum(report.prompt_lengths) / max(len(report.prompt_lengths), 1)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    try:
        top.plot(report.layers, report.entropy, marker="o", color="#0072B2")
        top.axhline(math.log(max(length, 1)), color="#0072B2", linestyle="--", linewidth=1, label="uniform (log T)")
        top.set_ylabel("entropy (nats)")
        top.legend(loc="best")
        bottom.plot(report.layers, report.coverage, marker="o", color="#E69F00")
        bottom.axhline(report.mass * length, color="#E69F00", linestyle="--", linewidth=1, label=f"uniform ({report.mass:g} T)")
        bottom.set_yscale("log")  # a few wide layers would otherwise flatten the rest
        bottom.set_ylabel(f"tokens holding {100 * report.mass:g}% of the mass")
        bottom.set_xlabel("layer")
        bottom.legend(loc="best")
        name = pathlib.PurePath(report.model).name or report.model
        fig.suptitle(f"Attention funnel of {name}: T = {length:.0f}, last W = {report.window} queries")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
