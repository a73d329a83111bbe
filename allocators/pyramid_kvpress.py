"""NVIDIA kvpress's ``PyramidKVPress`` budgets, reproduced exactly (float arithmetic and rounding included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kvpress_lab.budgets import BudgetRequest, check_budget_request
from kvpress_lab.validation import check_int

__all__ = ["KvpressPyramidAllocator", "kvpress_pyramid_budget"]


def kvpress_pyramid_budget(layer: int, num_layers: int, prompt_length: int, window: int, beta: int,
                           compression_ratio: float | None = None, budget: int | None = None) -> int:
    """Entries kept by layer ``layer`` under kvpress's ``PyramidKVPress.get_layer_budget``.

    kvpress builds the pyramid over the *total* kept count (window included): with
    ``K = T (1 - r)``, ``min = K / beta``, ``max = 2 K - min``, clamped to ``max = T - W`` (then
    ``min = 2 K - max``) when ``max >= T - W``; layer ``l`` keeps ``round(max - l (max - min) / (L - 1))``.
    When ``T >= max >= min >= W`` fails (the smallest layer would drop below the window), every
    layer keeps ``round(T (1 - r))``, SnapKV's budget. ``round`` is Python's (halves to even), and the
    expressions are evaluated in kvpress's order (``(W + T (1 - r)) - W``), so float error matches too.

    With an absolute ``budget`` instead of a ratio (kvpress has none), ``T (1 - r)`` is replaced by
    ``budget``.

    >>> [kvpress_pyramid_budget(l, 4, 2048, 64, 20, compression_ratio=0.5) for l in range(4)]
    [1984, 1344, 704, 64]
    >>> kvpress_pyramid_budget(0, 4, 2048, 64, 20, compression_ratio=0.75)  # fallback: SnapKV's count
    512
    """
    kept = prompt_length * (1 - compression_ratio) if compression_ratio is not None else float(budget)  # type: ignore[arg-type]
    max_capacity_prompt = window + kept
    min_num = (max_capacity_prompt - window) / beta
    max_num = (max_capacity_prompt - window) * 2 - min_num
    if max_num >= prompt_length - window:
        max_num = prompt_length - window
        min_num = (max_capacity_prompt - window) * 2 - max_num
    if not (prompt_length >= max_num >= min_num >= window):
        return round(kept)
    steps = (max_num - min_num) / (num_layers - 1)
    return round(max_num - layer * steps)


@dataclass(frozen=True)
class KvpressPyramidAllocator:
    """PyramidKV budgets exactly as NVIDIA kvpress's ``PyramidKVPress`` computes them.

    Based on https://arxiv.org/abs/2406.02069 (PyramidKV) as implemented by
    https://github.com/NVIDIA/kvpress ``kvpress/presses/pyramidkv_press.py`` (``get_layer_budget``),
    see :func:`kvpress_pyramid_budget`. It differs from :class:`~kvpress_lab.allocators.pyramid.PyramidAllocator`
    (the reference code's schedule over the *non-window* part) in three ways: the pyramid spans the
    total kept count, window included; it falls back to a uniform budget whenever the deepest layer
    would keep fewer than the window (at ratio 0.75 on a 2,048-token prompt with ``W = 64`` every layer
    keeps 512, exactly what ``SnapKVPress`` keeps); and it rounds each layer with Python's ``round``,
    so the mean is the ratio's count only up to rounding.

    The window ``W`` is the request's ``min_kept`` (the recipe's window for scorers without forced
    entries, such as ``snapkv_window``). kvpress reads the *padded* length of its one sequence; here
    ``T`` is each row's real length, the same for an unpadded prompt. Where kvpress would keep fewer
    entries than the window (a prompt shorter than about ``W / (1 - r)``, its SnapKV fallback), this
    allocator keeps ``min(W, T)``: the window always fits here. kvpress's ``L`` is
    ``config.num_hidden_layers``; here it is the number of compressed layers (the same except on
    families with sliding-window layers, such as Gemma 3). kvpress fails on a one-layer model (it
    divides by ``L - 1``); here one layer keeps the resolved budget.

    Parameters
    ----------
    beta : int
        kvpress's ``beta`` (``>= 1``, default 20): the deepest layer keeps ``K / beta``.

    Examples
    --------
    >>> request = BudgetRequest(4, 2, 2048, 1024, 64, compression_ratio=0.5)
    >>> KvpressPyramidAllocator().allocate(request)
    [1984, 1344, 704, 64]
    """

    name: ClassVar[str] = "pyramid_kvpress"
    scope: ClassVar[str] = "static"
    beta: int = 20

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "beta", self.beta, minimum=1)

    def allocate(self, request: BudgetRequest) -> list[int]:
        """``L`` per-layer budgets (window included), as kvpress keeps them; ``T`` each when ``r = 0``."""
        layers, length, budget, window = check_budget_request("KvpressPyramidAllocator", request)
        ratio = request.compression_ratio
        if ratio == 0.0 or (ratio is None and length <= budget):
            return [length] * layers  # kvpress: compression_ratio == 0 returns the cache unchanged
        if layers == 1:
            return [min(length, max(budget, min(window, length)))]
        floor = min(window, length)
        return [min(length, max(floor, kvpress_pyramid_budget(layer, layers, length, window, self.beta,
                                                              compression_ratio=ratio, budget=budget)))
                for layer in range(layers)]
