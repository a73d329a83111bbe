"""The one peak-memory sampler of the benchmarks: resident memory (and CUDA memory) over a block.

Inside ``with PeakMemory() as memory:`` a thread samples the process's resident set size every
``interval_s`` seconds (``psutil`` when it is installed, else ``/proc/self/statm`` on Linux); on
exit ``peak_rss_mb`` is the highest value seen and ``start_rss_mb`` the value on entry, so
``peak_extra_mb`` is what the block added at its peak. Where neither source exists, the
process's lifetime high-water mark (``resource.getrusage``) is reported instead
(``source == "getrusage"``, no start value). On a CUDA device ``cuda_peak_mb`` is
``torch.cuda.max_memory_allocated`` over the block.

>>> with PeakMemory(interval_s=0.001) as memory:
...     block = bytearray(8 * 2**20)
>>> memory.source in ("psutil", "statm", "getrusage") and memory.peak_rss_mb > 0
True
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PeakMemory"]


def _rss_reader() -> tuple[str, Callable[[], float]] | None:
    """``(source, function returning the resident size in MiB)``, or ``None`` when none is available."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        process = psutil.Process()
        return "psutil", lambda: process.memory_info().rss / 2**20
    if os.path.exists("/proc/self/statm"):
        page = os.sysconf("SC_PAGE_SIZE")

        def statm() -> float:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * page / 2**20

        return "statm", statm
    return None


class PeakMemory:
    """Context manager measuring peak RSS (MiB) and, on CUDA, peak allocated memory (MiB).

    Parameters
    ----------
    device : torch.device or str
        A CUDA device also has its peak allocated memory measured.
    interval_s : float
        Seconds between two RSS samples.
    """

    def __init__(self, device: Any = "cpu", interval_s: float = 0.005):
        self.device = str(device)
        self.interval_s = interval_s
        self.peak_rss_mb = float("nan")
        self.start_rss_mb = float("nan")  # resident size on entry (not with getrusage)
        self.cuda_peak_mb: float | None = None
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_extra_mb(self) -> float:
        """``peak_rss_mb - start_rss_mb``, at least 0 (NaN without a start value)."""
        if math.isnan(self.start_rss_mb):
            return float("nan")
        return max(self.peak_rss_mb - self.start_rss_mb, 0.0)

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        reader = _rss_reader()
        if reader is None:
            self.source = "getrusage"
            return self
        self.source, read = reader
        self.peak_rss_mb = self.start_rss_mb = read()

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self.peak_rss_mb = max(self.peak_rss_mb, read())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            import resource  # POSIX; ru_maxrss is KiB on Linux

            self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.device.startswith("cuda"):
            import torch

            self.cuda_peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
