"""Two-stage selection (CriticalKV): kept for its import path; the rule lives in :mod:`kvpress_lab.ranking`.

A scorer that defines ``staged_scores(view) -> (first, final)`` and ``first_stage_ratio`` is
selected in two stages (:func:`~kvpress_lab.ranking.first_stage_entries`): the engine applies it,
and the engine imports no plugin package, so the rule stands on the ground floor.
"""

from __future__ import annotations

from kvpress_lab.ranking import first_stage_entries

__all__ = ["first_stage_entries"]
