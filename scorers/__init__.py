"""Built-in token scorers (installed as ``kvpress_lab.scorers``)."""

from __future__ import annotations

from kvpress_lab.hookspecs import hookimpl
from kvpress_lab.scorers.compactor import CompactorScorer
from kvpress_lab.scorers.critical import CriticalScorer
from kvpress_lab.scorers.cur import CURScorer
from kvpress_lab.scorers.expected_attention import ExpectedAttentionScorer
from kvpress_lab.scorers.h2o import H2OScorer
from kvpress_lab.scorers.keydiff import KeyDiffScorer
from kvpress_lab.scorers.knorm import KNormScorer
from kvpress_lab.scorers.kvzip import KVzipScorer
from kvpress_lab.scorers.lagkv import LagKVScorer
from kvpress_lab.scorers.leverage import LeverageScorer
from kvpress_lab.scorers.non_causal import NonCausalAttentionScorer
from kvpress_lab.scorers.random_scorer import RandomScorer
from kvpress_lab.scorers.sink import SinkScorer
from kvpress_lab.scorers.snapkv_window import SnapKVWindowScorer
from kvpress_lab.scorers.tova import TOVAScorer

__all__ = [
    "SnapKVWindowScorer",
    "H2OScorer",
    "SinkScorer",
    "KNormScorer",
    "RandomScorer",
    "TOVAScorer",
    "KeyDiffScorer",
    "LagKVScorer",
    "LeverageScorer",
    "NonCausalAttentionScorer",
    "CompactorScorer",
    "CURScorer",
    "CriticalScorer",
    "ExpectedAttentionScorer",
    "KVzipScorer",
    "kvpress_lab_register_scorers",
]


@hookimpl
def kvpress_lab_register_scorers() -> list[type]:
    """Register the built-in scorers."""
    return [
        SnapKVWindowScorer, H2OScorer, SinkScorer, KNormScorer, RandomScorer, TOVAScorer,
        KeyDiffScorer, LagKVScorer, LeverageScorer, NonCausalAttentionScorer, CompactorScorer, CURScorer,
        ExpectedAttentionScorer, KVzipScorer,
        CriticalScorer,
    ]
