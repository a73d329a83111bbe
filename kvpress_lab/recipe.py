"""The Recipe: one allocator, one scorer, one executor and their hyperparameters."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvpress_lab.capabilities import ALLOCATOR, EXECUTOR, SCORER, by_role
from kvpress_lab.budgets import RATIO_ROUNDINGS, BudgetSpec, check_minimum_kept, minimum_kept
from kvpress_lab.frozen_mapping import FrozenMapping
from kvpress_lab.head_allocation import HEAD_ALLOCATIONS, HEAD_FLOOR_RULES
from kvpress_lab.protocols import Strategies
from kvpress_lab.registry import Role, get_registry
from kvpress_lab.sinks import RENAMED_FIELDS
from kvpress_lab.validation import check_bool, check_choice, check_float, check_int

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel
    from transformers.cache_utils import Cache

    from kvpress_lab.engine.session import CompressionSession
    from kvpress_lab.protocols import Allocator

__all__ = ["Recipe", "Strategies", "DEFAULT_BUDGET", "RECIPE_FORMAT_VERSION", "DECODE_SCHEDULES"]

#: Valid values of ``Recipe.decode_schedule``.
DECODE_SCHEDULES = ("slack", "every")

#: Recipe fields that every preset sets (explicitly or by default): giving one is an override.
_PRESET_FIELDS = ("allocator", "scorer", "executor", "window")
_ROLES = ("allocator", "scorer", "executor")

#: Entries per layer kept when a recipe gives neither ``budget`` nor ``compression_ratio``
#: (the PyramidKV paper's headline setting).
DEFAULT_BUDGET = 128

#: Version of the JSON written by :meth:`~kvpress_lab.Recipe.to_json` (key ``"format_version"``); files
#: without the key are read as version 1.
RECIPE_FORMAT_VERSION = 1
_VERSION_KEY = "format_version"


@dataclass(frozen=True)
class Recipe:
    """A compression method: ``allocator`` x ``scorer`` x ``executor`` plus hyperparameters.

    Parameters
    ----------
    allocator : str
        Registered allocator name (``"uniform"``, ``"pyramid"``, ...).
    scorer : str
        Registered scorer name (``"snapkv_window"``, ``"h2o"``, ``"sink"``, ...).
    executor : str or None
        Registered executor name. Default: ``"gather"`` (dense per layer), or ``"ragged"``
        (per-head storage) when ``head_allocation="adaptive"``.
    budget : int or None
        Mean cache entries kept per layer and KV head, observation window included. Default 128
        when ``compression_ratio`` is not given either. An allocator that does not use a budget
        (``threshold``) refuses one and keeps ``None``.
    compression_ratio : float or None
        Fraction of the prompt's entries to *remove*, in ``[0, 1)`` (kvpress's meaning): the
        budget becomes ``round((1 - ratio) * T)`` for each prompt, halves rounding up, or kvpress's
        truncation with ``ratio_rounding="kvpress"``. Excludes ``budget``.
    ratio_rounding : {"half_up", "kvpress"}
        How ``compression_ratio`` becomes a count: ``"half_up"`` (default, ``floor((1 - r) T + 0.5)``)
        or ``"kvpress"``, NVIDIA kvpress's ``max(1, int(T * (1 - r)))`` evaluated as kvpress does
        (``compression_ratio=0.5`` at ``T=4009``: 2005 vs 2004). The ``*-kvpress`` presets use it.
    window : int
        ``W``, the observation window: the last ``W`` prompt tokens, always kept, whose queries
        score the rest. Default 8 (the PyramidKV paper's LongBench setting). ``0`` forces no
        recent entry (kvpress's query-agnostic presses); a scorer that reads the window's queries
        then raises when it runs.
    head_allocation : {"uniform", "adaptive"}
        How a layer's budget is split across its KV heads: equally, or AdaKV-style by a top-k
        over all heads' scores (https://arxiv.org/abs/2407.11550), which needs a per-head
        (ragged) executor.
    head_floor : float
        AdaKV's safeguard ``alpha`` in ``[0, 1]``: every head keeps at least this fraction of
        the per-head average. Default 0.2.
    head_floor_rule : {"free", "kvpress"}
        What the safeguard counts (:func:`~kvpress_lab.head_allocation.adaptive_head_budgets`):
        ``"free"`` (default) guarantees every head its forced entries plus ``floor(alpha * (k - f))``
        of the ``k - f`` it may choose; ``"kvpress"`` guarantees the top ``max(1, floor(alpha * k))``
        entries by score, forced ones first, as kvpress's ``AdaKVPress`` does.
    allocator_kwargs, scorer_kwargs, executor_kwargs : Mapping[str, Any]
        Hyperparameters of each strategy (its dataclass fields). Must be JSON-serialisable.
    preset_name : str or None
        Name of the preset this recipe came from, recorded for reports; informational only.
    decode_budget : int or None
        Decoding-time compression: every ``compress_every`` generated tokens, each layer that
        holds ``decode_budget + compress_every`` entries or more is cut back to ``decode_budget``
        (per-layer budgets from the allocator), scored with the queries of the most recent
        tokens (kvpress's DecodingPress). ``None`` (default): decoding is never compressed.
    compress_every : int
        ``N``, tokens generated between two decoding-time compressions (default 16).
    compress_prefill : bool
        Compress the prefill (default ``True``); ``False`` with ``decode_budget`` compresses the
        generation only.
    rerotate_keys : bool
        Re-rotate the kept keys of every compressed layer to contiguous positions (StreamingLLM,
        Finch, kvpress's KeyRerotationPress), RoPE families only; default ``False`` (kept keys keep
        their true positions). See :mod:`kvpress_lab.engine.rerotation`.
    decode_schedule : {"slack", "every"}
        When decoding-time compression cuts: ``"slack"`` (default) as soon as a layer holds
        ``decode_budget + compress_every`` entries; ``"every"``, kvpress's ``DecodingPress``: every
        ``compress_every`` decoding steps, down to ``decode_budget``.
    block_size : int or None
        Score the one-shot prefill block by block, as kvpress's ``BlockPress`` simulates the KeyDiff
        paper's block prompt processing inside one forward: the first ``k`` entries are kept, then
        each block of ``block_size`` further entries is scored together with the kept ones and the
        best ``k`` stay. ``None`` (default): one scoring of the whole prompt. A scorer that reads
        queries or hidden states cannot score such a block (its entries differ per head); for the
        real thing, a chunked prefill (``prefill_chunk_size``), use a chunkable scorer.

    Examples
    --------
    >>> recipe = Recipe(allocator="pyramid", scorer="snapkv_window", budget=64)
    >>> recipe.strategies.scorer.name
    'snapkv_window'
    >>> Recipe.from_json(recipe.to_json()) == recipe
    True
    >>> Recipe(allocator="pyramd")
    Traceback (most recent call last):
    ...
    kvpress_lab.errors.UnknownStrategyError: Unknown allocator 'pyramd'. Did you mean 'pyramid'? ...
    """

    allocator: str = "uniform"
    scorer: str = "snapkv_window"
    executor: str | None = None
    budget: int | None = None
    compression_ratio: float | None = None
    window: int = 8
    head_allocation: str = "uniform"
    head_floor: float = 0.2
    head_floor_rule: str = "free"
    allocator_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scorer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    executor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    preset_name: str | None = None
    decode_budget: int | None = None
    compress_every: int = 16
    compress_prefill: bool = True
    ratio_rounding: str = "half_up"
    rerotate_keys: bool = False
    decode_schedule: str = "slack"
    block_size: int | None = None

    def __post_init__(self) -> None:
        self._check_fields()
        built = Strategies(
            allocator=self._build("allocator", self.allocator, "allocator_kwargs"),
            scorer=self._build("scorer", self.scorer, "scorer_kwargs"),
            executor=self._build("executor", self.executor, "executor_kwargs"),
        )
        object.__setattr__(self, "_strategies", built)
        self._settle_budget(built.allocator)
        self._check_strategies(built)
        planned = DEFAULT_BUDGET if self.budget is None and self.compression_ratio is None else self.budget  # budget-free allocator
        spec = BudgetSpec(planned, self.compression_ratio, self.window, minimum_kept(self.window, built.scorer), self.scorer,
                          self.ratio_rounding)
        object.__setattr__(self, "_budget_spec", spec)
        if self.decode_budget is not None:
            check_minimum_kept(self.decode_budget, spec.min_kept, window=self.window, source="recipe", scorer=self.scorer,
                               field="decode_budget")

    def _check_fields(self) -> None:
        """Each field's type and range, and the combinations of fields that cannot work; fill the executor's default."""
        check_int("Recipe", "window", self.window, minimum=0)
        if self.budget is not None and self.compression_ratio is not None:
            raise ValueError(
                f"Recipe takes either budget or compression_ratio, not both; got budget={self.budget!r} "
                f"and compression_ratio={self.compression_ratio!r}."
            )
        if self.compression_ratio is not None:
            ratio = check_float("Recipe", "compression_ratio", self.compression_ratio, minimum=0.0, maximum=1.0, max_inclusive=False)
            object.__setattr__(self, "compression_ratio", ratio)
        elif self.budget is not None:
            check_int("Recipe", "budget", self.budget, minimum=1)
        check_choice("Recipe", "head_allocation", self.head_allocation, HEAD_ALLOCATIONS)
        check_choice("Recipe", "ratio_rounding", self.ratio_rounding, RATIO_ROUNDINGS)
        object.__setattr__(self, "head_floor", check_float("Recipe", "head_floor", self.head_floor, minimum=0.0, maximum=1.0))
        check_choice("Recipe", "head_floor_rule", self.head_floor_rule, HEAD_FLOOR_RULES)
        check_choice("Recipe", "decode_schedule", self.decode_schedule, DECODE_SCHEDULES)
        if self.block_size is not None:
            check_int("Recipe", "block_size", self.block_size, minimum=1)
            if self.head_allocation != "uniform" or self.rerotate_keys or self.decode_budget is not None:
                raise ValueError("Recipe.block_size (kvpress's BlockPress) scores the one-shot prefill block by block with "
                                 "one budget per layer; it does not combine with head_allocation='adaptive', rerotate_keys "
                                 "or decode_budget.")
        if self.executor is None:
            object.__setattr__(self, "executor", "ragged" if self.head_allocation == "adaptive" else "gather")
        check_int("Recipe", "compress_every", self.compress_every, minimum=1)
        check_bool("Recipe", "compress_prefill", self.compress_prefill)
        check_bool("Recipe", "rerotate_keys", self.rerotate_keys)
        if self.rerotate_keys and self.decode_budget is not None:
            raise ValueError("Recipe.rerotate_keys re-rotates the keys kept by the prefill's compression only; it does not "
                             "combine with decode_budget (decoding-time compression) yet.")
        if self.decode_budget is not None:
            check_int("Recipe", "decode_budget", self.decode_budget, minimum=1)
            if self.head_allocation != "uniform":
                raise ValueError("Recipe.decode_budget does not combine with head_allocation='adaptive' yet (per-head "
                                 "layers are not re-compressed during decoding); use head_allocation='uniform'.")
        elif not self.compress_prefill:
            raise ValueError("Recipe.compress_prefill=False compresses nothing unless decode_budget is set; set decode_budget.")
        if self.preset_name is not None and not isinstance(self.preset_name, str):
            raise TypeError(f"Recipe.preset_name must be a string or None, got {type(self.preset_name).__name__}.")

    def _check_strategies(self, built: Strategies) -> None:
        """What the built strategies declare (:mod:`kvpress_lab.capabilities`) against the recipe's other fields."""
        if self.head_allocation == "adaptive" and not EXECUTOR.of(built.executor, "per_head_budgets"):
            raise ValueError(
                f"Recipe.head_allocation='adaptive' gives KV heads different budgets, which the {self.executor!r} "
                "executor cannot store (it does not declare per_head_budgets); use executor='ragged' (the default "
                "for adaptive head allocation)."
            )
        if self.block_size is not None:
            reasons = []
            if built.allocator.scope != "static":
                reasons.append(f"allocator {self.allocator!r} has scope {built.allocator.scope!r}")
            if SCORER.of(built.scorer, "needs") == "reconstruction":
                reasons.append(f"scorer {self.scorer!r} is scored by a reconstruction pass")
            if minimum_kept(self.window, built.scorer) > self.window:
                reasons.append(f"scorer {self.scorer!r} forces entries (sinks) defined on the whole prompt")
            if reasons:
                raise ValueError("Recipe.block_size (kvpress's BlockPress) rescores subsets of a layer with a static "
                                 f"budget; {'; '.join(reasons)}.")
        if self.window == 0:
            readers = [f"{role} {getattr(self, role)!r}" for role, obj in zip(("allocator", "scorer"), built[:2])
                       if by_role(role).of(obj, "needs_window")]
            if readers:
                raise ValueError(f"Recipe.window=0 leaves no observation window, but {' and '.join(readers)} reads the "
                                 "observation window's queries; give window >= 1.")
        if ALLOCATOR.of(built.allocator, "per_head"):
            if self.head_allocation != "uniform":
                raise ValueError(f"Allocator {self.allocator!r} {dict(self.allocator_kwargs)} gives every KV head its own budget "
                                 "already; head_allocation must be 'uniform' (got 'adaptive').")
            if not EXECUTOR.of(built.executor, "per_head_budgets"):
                raise ValueError(f"Allocator {self.allocator!r} {dict(self.allocator_kwargs)} gives KV heads different budgets, "
                                 f"which the {self.executor!r} executor cannot store; use executor='ragged'.")
        if self.decode_budget is not None and SCORER.of(built.scorer, "needs") == "reconstruction":
            raise ValueError(f"Recipe.decode_budget does not combine with scorer {self.scorer!r}: it is scored by a reconstruction "
                             "pass after the prefill, which decoding-time compression cannot rerun; drop decode_budget.")

    def _settle_budget(self, allocator: Allocator) -> None:
        """Default the budget to :data:`DEFAULT_BUDGET`; refuse one for an allocator that does not use it.

        An allocator declaring ``uses_budget = False`` (``threshold``: what a row keeps follows its
        scores) would ignore ``budget`` / ``compression_ratio``, so a budget sweep would give identical
        rows; its recipes keep ``budget=None``.
        """
        if ALLOCATOR.of(allocator, "uses_budget"):
            if self.budget is None and self.compression_ratio is None:
                object.__setattr__(self, "budget", DEFAULT_BUDGET)
            return
        given = {k: v for k, v in (("budget", self.budget), ("compression_ratio", self.compression_ratio)) if v is not None}
        if given:
            setting = ", ".join(f"{k}={v!r}" for k, v in given.items())
            raise ValueError(
                f"Recipe: allocator {self.allocator!r} does not use a budget (what each row keeps follows its scores), so "
                f"{setting} would be ignored; drop {' and '.join(given)} and tune the allocator instead "
                f"(allocator_kwargs, e.g. {{'threshold': ...}})."
            )

    def _build(self, role: Role, name: Any, kwargs_field: str) -> Any:
        if not isinstance(name, str):
            raise TypeError(f"Recipe.{role} must be a registered name (str), got {name!r} of type {type(name).__name__}.")
        cls = get_registry().get(role, name).obj
        accepted = [f.name for f in dataclasses.fields(cls) if f.init]
        kwargs = _frozen_json_mapping(_renamed(getattr(self, kwargs_field), accepted, f"Recipe.{kwargs_field}"),
                                      f"Recipe.{kwargs_field}")
        object.__setattr__(self, kwargs_field, kwargs)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"Recipe.{kwargs_field}: {role} {name!r} ({cls.__name__}) has no parameter "
                f"{', '.join(repr(u) for u in unknown)}; accepted: {', '.join(accepted) or '(none)'}."
            )
        return cls(**_with_recipe_fields(role, cls, kwargs, self))

    # -- derived values --------------------------------------------------------------------

    @property
    def strategies(self) -> Strategies:
        """The allocator, scorer and executor instances (built and validated at construction)."""
        return self._strategies  # type: ignore[attr-defined]

    @property
    def budget_spec(self) -> BudgetSpec:
        """The budget numbers the engine plans with (see :mod:`kvpress_lab.budgets`)."""
        return self._budget_spec  # type: ignore[attr-defined]

    @property
    def decode_spec(self) -> BudgetSpec | None:
        """The budget numbers of decoding-time compression, or ``None`` when it is off."""
        if self.decode_budget is None:
            return None
        spec = self.budget_spec
        return BudgetSpec(self.decode_budget, None, spec.window, spec.min_kept, spec.scorer)

    @property
    def minimum_budget(self) -> int:
        """Smallest budget this recipe can run: the window, plus entries its scorer forces (sinks)."""
        return self.budget_spec.min_kept

    def resolve_budget(self, prompt_length: int) -> int:
        """Mean entries per layer to keep for a prompt of ``prompt_length`` real tokens.

        >>> Recipe(compression_ratio=0.75).resolve_budget(1000)
        250
        """
        return self.budget_spec.resolve(prompt_length)

    # -- presets and serialisation ---------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Recipe:
        """Build the registered preset ``name``, with any :class:`Recipe` field overridden.

        The override rules (the same from Python and from ``kvpress-lab run --preset``):

        * ``*_kwargs`` overrides are merged into the preset's;
        * a strategy replaced by another (``scorer="h2o"`` on ``snapkv``) does not inherit the
          preset's hyperparameters of the old one (``snapkv_window``'s ``kernel_size`` means
          nothing to ``h2o``): that role's ``*_kwargs`` start empty, or are the ones given;
        * giving ``compression_ratio`` replaces a preset's ``budget``.

        :meth:`preset_changes` says, in words, what the overrides change.

        >>> Recipe.preset("pyramidkv", budget=64).allocator
        'pyramid'
        >>> dict(Recipe.preset("snapkv", scorer="h2o").scorer_kwargs)
        {}
        """
        preset = get_registry().get("preset", name).obj
        arguments: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in preset.recipe.items()}
        replaced = cls._replaced_roles(name, overrides)
        for role in replaced:
            arguments.pop(f"{role}_kwargs", None)  # the old strategy's hyperparameters
        for key, value in overrides.items():
            if key.endswith("_kwargs") and isinstance(value, Mapping):
                arguments[key] = {**arguments.get(key, {}), **value}
            else:
                arguments[key] = value
        if "compression_ratio" in overrides and "budget" not in overrides:
            arguments.pop("budget", None)
        arguments["preset_name"] = name
        return cls(**arguments)

    @classmethod
    def preset_changes(cls, name: str, **overrides: Any) -> list[str]:
        """What ``overrides`` change in preset ``name``, one phrase per field the preset sets (a budget or ratio the
        preset leaves open is no change).

        >>> Recipe.preset_changes("snapkv", scorer="h2o", budget=64)  # doctest: +ELLIPSIS
        ["scorer=h2o (was snapkv_window; the preset's scorer_kwargs kernel_size=7, ... are dropped)"]
        """
        preset = get_registry().get("preset", name).obj.recipe
        reference = cls.preset(name)
        replaced = cls._replaced_roles(name, overrides)
        notes = []
        for key, value in overrides.items():
            if key in _PRESET_FIELDS or key in preset or (key == "compression_ratio" and "budget" in preset):
                old = getattr(reference, key)
                note = f"{key}={value} ({'unchanged' if value == old else f'was {old}'}"
                if key in replaced and preset.get(f"{key}_kwargs"):
                    dropped = ", ".join(f"{k}={v}" for k, v in preset[f"{key}_kwargs"].items())
                    note += f"; the preset's {key}_kwargs {dropped} are dropped"
                notes.append(note + ")")
        return notes

    @classmethod
    def _replaced_roles(cls, name: str, overrides: Mapping[str, Any]) -> list[str]:
        """The roles ``overrides`` give another strategy than preset ``name``'s."""
        candidates = [role for role in _ROLES if role in overrides]
        if not candidates:
            return []
        reference = cls.preset(name)
        return [role for role in candidates if overrides[role] != getattr(reference, role)]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of every field."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`TypeError` naming them.

        An optional ``"format_version"`` key (written by :meth:`to_json`) must be a version this
        kvpress_lab reads.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"Recipe.from_dict expects a mapping, got {type(data).__name__}.")
        data = dict(data)
        version = data.pop(_VERSION_KEY, RECIPE_FORMAT_VERSION)
        if isinstance(version, bool) or version != RECIPE_FORMAT_VERSION:
            raise ValueError(
                f"Recipe format_version {version!r} is not one this kvpress_lab reads (it reads {RECIPE_FORMAT_VERSION}); "
                "the recipe was written by another version of kvpress_lab: upgrade kvpress_lab, or rewrite the file."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"Recipe.from_dict: unknown field(s) {unknown}; expected a subset of {sorted(known)}.")
        return cls(**data)

    def to_json(self, **dumps_kwargs: Any) -> str:
        """JSON text of :meth:`to_dict`, with ``"format_version"`` (:data:`~kvpress_lab.recipe.RECIPE_FORMAT_VERSION`)."""
        return json.dumps({_VERSION_KEY: RECIPE_FORMAT_VERSION, **self.to_dict()}, sort_keys=True, **dumps_kwargs)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickle and copy through :meth:`to_dict` / :meth:`from_dict` (strategies are rebuilt, validated)."""
        return type(self).from_dict, (self.to_dict(),)

    def __deepcopy__(self, memo: dict[int, Any]) -> Recipe:
        return self  # immutable: every field is a str, a number, None or a FrozenMapping

    # -- running ---------------------------------------------------------------------------

    def apply(self, model: PreTrainedModel, *, record_indices: bool = False) -> CompressionSession:
        """Context manager compressing the KV cache of every prefill ``model`` runs inside it.

        See :class:`kvpress_lab.engine.session.CompressionSession`.
        """
        from kvpress_lab.engine.session import CompressionSession  # lazy: importing a Recipe loads no engine

        return CompressionSession(self, model, record_indices=record_indices)

    def prefill(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        chunk_size: int | None = None,
    ) -> Cache:
        """Run the prompt once (or in chunks of ``chunk_size``) and return its compressed cache.

        See :func:`kvpress_lab.engine.prefill.prefill`.
        """
        from kvpress_lab.engine.prefill import prefill  # lazy: importing a Recipe loads no engine

        return prefill(self, model, input_ids, attention_mask, chunk_size=chunk_size)


def _with_recipe_fields(role: Role, cls: type, kwargs: Mapping[str, Any], recipe: Recipe) -> dict[str, Any]:
    """``kwargs`` plus the recipe's own values of the fields ``cls`` declares in ``recipe_fields`` (unless given).

    A strategy whose published arithmetic reads a number of the recipe (kvpress's Compactor blends
    by the compression ratio, ChunkKV counts chunks from it) declares
    ``recipe_fields: ClassVar[tuple[str, ...]] = ("compression_ratio",)`` and a dataclass field of
    that name; the recipe fills it in. The value is not recorded in the ``*_kwargs`` (the recipe
    records it once, as its own field).
    """
    merged = dict(kwargs)
    for name in by_role(role).of(cls, "recipe_fields"):
        if name not in merged:
            merged[name] = getattr(recipe, name)
    return merged


def _renamed(kwargs: Any, accepted: list[str], where: str) -> Any:
    """``kwargs`` with a renamed hyperparameter's old name (``n_sink``) replaced by the new one, with a warning.

    Only where the strategy takes the new name and not the old one; the recipe then records the
    new name (:data:`kvpress_lab.sinks.RENAMED_FIELDS`).
    """
    if not isinstance(kwargs, Mapping):
        return kwargs
    old = [key for key, new in RENAMED_FIELDS.items() if key in kwargs and new in accepted and key not in accepted]
    if not old:
        return kwargs
    renamed = {RENAMED_FIELDS.get(key, key) if key in old else key: value for key, value in kwargs.items()}
    for key in old:
        if RENAMED_FIELDS[key] in kwargs:
            raise TypeError(f"{where} gives both {key!r} and its new name {RENAMED_FIELDS[key]!r}; keep {RENAMED_FIELDS[key]!r}.")
        warnings.warn(f"{where}: {key!r} is deprecated, it is called {RENAMED_FIELDS[key]!r} now (one name for attention "
                      "sinks in every scorer); the recipe records the new name.", DeprecationWarning, stacklevel=5)
    return renamed


def _frozen_json_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a mapping of parameter names to values, got {type(value).__name__}.")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{where} keys must be parameter names (str), got {key!r}.")
    try:
        return FrozenMapping(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} must be JSON-serialisable so results record exactly what ran: {exc}.") from None
