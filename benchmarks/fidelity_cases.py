"""The fidelity harness's mapping: each kvpress 0.5.5 press and the kvpress_lab recipe that reproduces it.

A case is named after the kvpress press (first column); :mod:`~kvpress_lab.benchmarks.kvpress_side`
builds kvpress's side (:func:`~kvpress_lab.benchmarks.kvpress_side.build_press`), and
:func:`build_recipe` ours: ``Recipe.preset(<preset>, compression_ratio=r)``, or, for the decoding
case, ``Recipe.preset(<preset>, decode_budget=K, compress_every=N)``. A preset not registered
(yet) makes the case "preset missing" (:class:`PresetMissing`), reported, not fatal.
``--recipe CASE=SPEC`` replaces a case's recipe (:func:`parse_override`).

Examples
--------
>>> parse_override('knorm={"scorer": "knorm"}')
('knorm', {'scorer': 'knorm'})
>>> parse_override("observed_attention=h2o")
('observed_attention', 'h2o')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvpress_lab import Recipe, UnknownStrategyError

__all__ = ["Case", "CASES", "PresetMissing", "case_names", "parse_override", "build_recipe"]


@dataclass(frozen=True)
class Case:
    """One row of the mapping.

    Parameters
    ----------
    name : str
        The case id (kvpress's registry-like name of the press).
    press : str
        kvpress's side, as written in the table.
    preset : str
        Our preset's name.
    scorer_kwargs : Mapping[str, Any]
        Added to the preset's ``scorer_kwargs`` (``random``: ``seed=0``, as kvpress's side); an
        override gives its own.
    decoding : bool
        Compression during decoding (DecodingPress): no ratio sweep.
    spread : bool
        kvpress draws a random sketch: also measure kvpress against itself with seed + 1.
    """

    name: str
    press: str
    preset: str
    scorer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    decoding: bool = False
    spread: bool = False


CASES: tuple[Case, ...] = (
    Case("snapkv", "SnapKVPress", "snapkv-kvpress"),
    Case("pyramidkv", "PyramidKVPress", "pyramidkv-kvpress"),
    Case("streaming_llm", "StreamingLLMPress", "streamingllm-kvpress"),
    Case("knorm", "KnormPress", "knorm-kvpress"),
    Case("random", "RandomPress(seed=0)", "random-kvpress", scorer_kwargs={"seed": 0}),
    Case("tova", "TOVAPress", "tova-kvpress"),
    Case("observed_attention", "ObservedAttentionPress (eager)", "observed-attention-kvpress"),
    Case("expected_attention", "ExpectedAttentionPress", "expected-attention-kvpress"),
    Case("keydiff", "KeyDiffPress", "keydiff-kvpress"),
    Case("lagkv", "LagKVPress", "lagkv-kvpress"),
    Case("non_causal", "NonCausalAttnPress", "non-causal-kvpress"),
    Case("leverage", "LeverageScorePress", "leverage-kvpress", spread=True),
    Case("compactor", "CompactorPress", "compactor-kvpress", spread=True),
    Case("cur", "CURPress", "cur-kvpress"),
    Case("kvzip", "KVzipPress", "kvzip-kvpress"),
    Case("adakv_snapkv", "AdaKVPress(SnapKVPress)", "adakv-kvpress"),
    Case("critical_snapkv", "CriticalKVPress(SnapKVPress)", "criticalkv-kvpress"),
    Case("critical_adakv_snapkv", "CriticalAdaKVPress(SnapKVPress)", "criticaladakv-kvpress"),
    Case("chunkkv", "ChunkKVPress(SnapKVPress, 20)", "chunkkv-kvpress"),
    Case("merging_snapkv", "MergingPress(SnapKVPress)", "snapkv-merge-kvpress"),
    Case("block_keydiff", "BlockPress(KeyDiffPress, 128)", "block-keydiff-kvpress"),
    Case("rerotated_streaming_llm", "KeyRerotationPress(StreamingLLMPress)", "streamingllm-rerotated-kvpress"),
    Case("decoding_knorm", "DecodingPress(KnormPress)", "decoding-knorm-kvpress", decoding=True),
)

_BY_NAME = {case.name: case for case in CASES}


class PresetMissing(LookupError):
    """Our side of a case names a preset that is not registered."""


def case_names() -> list[str]:
    """Every case id, in the table's order."""
    return [case.name for case in CASES]


def get_case(name: str) -> Case:
    """The case ``name``; ``ValueError`` listing the valid ids otherwise."""
    if name not in _BY_NAME:
        raise ValueError(f"Unknown fidelity case {name!r}; expected one of {case_names()}.")
    return _BY_NAME[name]


def parse_override(text: str) -> tuple[str, str | dict[str, Any]]:
    """``CASE=SPEC`` -> ``(case, spec)``: SPEC is a preset name or a JSON object of :class:`Recipe` fields.

    A JSON object may hold ``"preset": NAME`` to start from that preset and override the rest.
    """
    name, sep, spec = text.partition("=")
    if not sep or not spec:
        raise ValueError(f"Expected --recipe CASE=PRESET or CASE=JSON, got {text!r}.")
    get_case(name)
    spec = spec.strip()
    if spec.startswith("{"):
        try:
            value = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--recipe {name}=...: the JSON does not parse ({exc}).") from None
        return name, value
    return name, spec


def build_recipe(case: Case, ratio: float | None, override: str | Mapping[str, Any] | None = None,
                 decoding: Mapping[str, int] | None = None) -> Recipe:
    """Our recipe for ``case`` at ``ratio`` (or the decoding parameters), from its preset or ``override``.

    Raises
    ------
    PresetMissing
        The preset to build from is not registered.
    """
    size: dict[str, Any] = ({"decode_budget": decoding["target_size"], "compress_every": decoding["compression_interval"]}
                            if case.decoding else {"compression_ratio": ratio})
    if override is None:
        return _preset(case.preset, {**size, "scorer_kwargs": dict(case.scorer_kwargs)})
    if isinstance(override, str):
        return _preset(override, size)
    fields = dict(override)
    preset = fields.pop("preset", None)
    if preset is not None:
        return _preset(preset, {**fields, **size})
    return Recipe(**{**fields, **size})


def _preset(name: str, overrides: dict[str, Any]) -> Recipe:
    try:
        return Recipe.preset(name, **overrides)
    except UnknownStrategyError:
        raise PresetMissing(f"preset {name!r} is not registered") from None
