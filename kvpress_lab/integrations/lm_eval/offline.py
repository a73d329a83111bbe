"""Offline runs of lm-eval: no nltk download, logged instead.

lm-eval's RULER code (``lm_eval.tasks.ruler.prepare_niah``) calls ``nltk.download("punkt_tab")``
when it is imported; only its essay haystack splits sentences with it, and the tasks using that
haystack download their data anyway. :func:`no_downloads` makes every machine behave as an
offline one does (``nltk.download`` returns ``False``), and says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["no_downloads"]

logger = logging.getLogger("lm_eval.models.kvpress_lab")


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Within the block, ``nltk.download`` downloads nothing: it logs the refusal and returns ``False``.

    ``nltk.download`` returns ``False`` when it cannot download, which is what lm-eval's RULER code
    sees on an offline machine; this makes every machine behave so, and says it.
    """
    try:
        import nltk  # lm-eval[ruler]
    except ImportError:  # no nltk: lm-eval's RULER tasks say which extra to install when they import it
        yield
        return

    def refuse(info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
        logger.warning("kvpress_lab: not downloading nltk data %r (runs are offline; the offline RULER tasks do not "
                       "use it).", info_or_id)
        return False

    original = nltk.download
    nltk.download = refuse
    try:
        yield
    finally:
        nltk.download = original
