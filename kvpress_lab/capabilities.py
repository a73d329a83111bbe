"""Every optional capability the engine reads from a plugin: declared once, with its default and meaning.

A role's protocol has a few required members (a scorer's ``name`` and ``score``, an allocator's
``name``, ``scope`` and ``allocate``, an executor's ``name``, ``select`` and ``build_layer``).
Everything else the engine, the recipe or the budgets may read from a strategy or a cache layer
is a *capability*, declared here in the table of its role: :data:`SCORER`, :data:`ALLOCATOR`,
:data:`EXECUTOR` and :data:`CACHE_LAYER` (the protocols in :mod:`kvpress_lab.protocols` and
:mod:`kvpress_lab.cache_layers.protocol` list them). A capability is a value (a class attribute,
a property or a dataclass field) or a method; a strategy that does not define it gets the
declared default (``None`` for a method: absent).

The engine reads capabilities only through :meth:`Capabilities.of` (``SCORER.of(scorer,
"chunked_prefill")``), which knows the defaults and refuses a name that is not declared, so a
misspelt read in the engine is an error too. Registration checks each strategy class against
its role (:meth:`Capabilities.check_class`): a ``ClassVar`` or plain class attribute that is no
capability of the role, a method or property whose name is one letter away from a capability
(``chunked_prefil``), a value of the wrong type, and a capability whose companions are missing
(``accumulates_scores`` without ``score_chunk``) are refused with a
:class:`~kvpress_lab.errors.PluginError` naming what and why.

This module imports neither torch nor any other part of kvpress_lab beyond its errors, so the
registry can check plugins without loading the engine.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Scorer:
...     name = "demo"
...     chunked_prefill = True
...     def score(self, view): ...
>>> SCORER.of(Scorer(), "chunked_prefill"), SCORER.of(Scorer(), "accumulates_scores")
(True, False)
>>> class Misspelt(Scorer):
...     chunked_prefil = True
>>> SCORER.check_class(Misspelt, "my-plugin")
Traceback (most recent call last):
...
kvpress_lab.errors.PluginError: Plugin 'my-plugin': scorer Misspelt declares 'chunked_prefil', which is not a scorer capability kvpress_lab reads. Did you mean 'chunked_prefill'? ...
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kvpress_lab.errors import PluginError

__all__ = ["Capability", "Capabilities", "SCORER", "ALLOCATOR", "EXECUTOR", "CACHE_LAYER", "by_role"]

_ABSENT = object()


@dataclass(frozen=True)
class Capability:
    """One optional member of a role.

    Parameters
    ----------
    name : str
        The attribute or method name.
    default : Any
        What a strategy that does not define it has (``None`` for a method: absent).
    meaning : str
        What the engine does with it (one sentence, shown in the docs and in errors).
    method : bool
        A method (called by the engine) rather than a value.
    kind : type or tuple of type or None
        The type a declared value must have (``bool``, ``tuple``, ...); ``None``: not checked.
    choices : tuple or None
        The values a declared value may take; ``None``: any of ``kind``.
    requires : tuple of str
        Capabilities a strategy must also define when it declares this one (truthy value, or method).
    """

    name: str
    default: Any
    meaning: str
    method: bool = False
    kind: type | tuple[type, ...] | None = None
    choices: tuple[Any, ...] | None = None
    requires: tuple[str, ...] = ()

    def check_value(self, value: Any, where: str) -> None:
        """Refuse a declared value of the wrong type or outside ``choices`` (``where`` names the owner)."""
        if self.method:
            if not callable(value):
                raise PluginError(f"{where}: {self.name!r} must be a method ({self.meaning}), got {value!r}.")
            return
        if self.choices is not None:
            if value not in self.choices:
                raise PluginError(f"{where}: {self.name!r} must be one of {self.choices!r} ({self.meaning}), got {value!r}.")
            return
        kinds = () if self.kind is None else self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise PluginError(f"{where}: {self.name!r} must be a {' or '.join(k.__name__ for k in kinds)} "
                              f"({self.meaning}), got {value!r}.")


class Capabilities:
    """The capabilities of one role, and the one way to read them.

    Parameters
    ----------
    role : str
        ``"scorer"``, ``"allocator"``, ``"executor"`` or ``"cache layer"``.
    required : Iterable[str]
        The role's required members (never reported as unknown).
    capabilities : Iterable[Capability]
        The optional ones.
    """

    def __init__(self, role: str, required: Iterable[str], capabilities: Iterable[Capability]):
        self.role = role
        self.required = tuple(required)
        self.declared: dict[str, Capability] = {c.name: c for c in capabilities}

    def __iter__(self) -> Iterator[Capability]:
        return iter(self.declared.values())

    def of(self, obj: Any, name: str) -> Any:
        """``obj``'s value of capability ``name`` (a bound method for a method), or the declared default.

        Raises
        ------
        KeyError
            ``name`` is not declared for this role (a misspelt read).
        """
        capability = self.declared.get(name)
        if capability is None:
            raise KeyError(f"{name!r} is not a declared {self.role} capability; declared: {', '.join(self.declared)}.")
        value = getattr(obj, name, _ABSENT)
        return capability.default if value is _ABSENT else value

    def check_class(self, cls: type, plugin: str) -> None:
        """Refuse what ``cls`` declares that the engine would never read, or would read wrongly.

        Raises
        ------
        PluginError
            A ``ClassVar`` or plain class attribute that is no capability of the role; a method or
            property named like a capability but misspelt; a declared value of the wrong type; a
            capability declared without the companions it requires.
        """
        where = f"Plugin {plugin!r}: {self.role} {cls.__name__}"
        fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
        known = set(self.declared) | set(self.required)
        for name, member in _members(cls).items():
            if name in known or name in fields or name.isupper():
                continue
            looks_like_data = name in _classvars(cls) or not (callable(member) or isinstance(member, _DESCRIPTORS))
            close = difflib.get_close_matches(name, list(self.declared), n=1, cutoff=0.85)
            if looks_like_data or close:
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise PluginError(
                    f"{where} declares {name!r}, which is not a {self.role} capability kvpress_lab reads.{hint} "
                    f"Capabilities: {', '.join(self.declared)} (see kvpress_lab.capabilities); hyperparameters are "
                    "dataclass fields, and helpers whose name starts with '_' are never read."
                )
        for capability in self:
            value = getattr(cls, capability.name, _ABSENT)
            if value is _ABSENT or isinstance(value, _DESCRIPTORS) or capability.name in fields:
                continue  # absent, or decided per instance (a property, a dataclass field): read when used
            capability.check_value(value, where)
            if (value if not capability.method else True) and capability.requires:
                missing = [r for r in capability.requires if getattr(cls, r, _ABSENT) is _ABSENT and r not in fields]
                if missing:
                    raise PluginError(f"{where} declares {capability.name!r} ({capability.meaning}) but not "
                                      f"{', '.join(repr(m) for m in missing)}, which it requires.")

    def rst(self) -> str:
        """A reST definition list of the capabilities (for the protocols' docstrings)."""
        lines = []
        for c in self:
            default = "absent" if c.method else f"default ``{c.default!r}``"
            lines += [f"``{c.name}``{' (method)' if c.method else ''}, {default}", f"    {c.meaning}"]
        return "\n".join(lines)


_DESCRIPTORS = (property, classmethod, staticmethod)


def _members(cls: type) -> dict[str, Any]:
    """Public members ``cls`` and its bases (up to ``object`` and ``typing.Protocol``) define."""
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass.__module__ == "typing" or klass.__name__ == "Protocol":
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_"):
                members[name] = value
    return members


def _classvars(cls: type) -> set[str]:
    """Names annotated ``ClassVar[...]`` in ``cls`` or its bases (string annotations included)."""
    names = set()
    for klass in cls.__mro__:
        for name, annotation in inspect.get_annotations(klass).items():
            text = annotation if isinstance(annotation, str) else repr(annotation)
            if text.startswith(("ClassVar", "typing.ClassVar")):
                names.add(name)
    return names


#: What the engine and the recipe may read from a scorer beyond ``name`` and ``score(view)``.
SCORER = Capabilities("scorer", ("name", "score"), [
    Capability("chunked_prefill", False, "scores a chunk of a chunked prefill from the entries held and the chunk's "
               "queries; without it a chunked prefill is refused", kind=bool),
    Capability("accumulates_scores", False, "keeps running scores across the chunks of a chunked prefill: the engine adds "
               "score_chunk(view, start) to the kept entries' scores (h2o)", kind=bool, requires=("score_chunk",)),
    Capability("score_chunk", None, "score_chunk(view, query_start) -> (B, Hkv, T): the share of the queries from "
               "query_start on, for accumulates_scores", method=True),
    Capability("reads_every_query", False, "reads the queries of every prompt token: the engine hands over the queries "
               "the attention computed instead of recomputing them (h2o)", kind=bool),
    Capability("needs", None, "'reconstruction': scored by a forward pass after the prefill (kvzip), which the engine "
               "runs; see the reconstruction methods below", choices=(None, "reconstruction"),
               requires=("prompt", "prompt_from_tokenizer", "chunks", "reconstruction_scores")),
    Capability("needs_window", False, "reads the observation window's queries: Recipe(window=0) is refused", kind=bool),
    Capability("num_sinks", 0, "attention sinks: the first num_sinks real tokens of every row (kvpress_lab.sinks); "
               "what the engine's reconstruction pass scores as sinks", kind=int),
    Capability("forced_keep", None, "forced_keep(view) -> (B, Hkv, T) bool or None: entries kept whatever their score "
               "(sinks), on top of the observation window", method=True),
    Capability("minimum_budget", None, "minimum_budget(window) -> int: the smallest budget holding the forced entries "
               "and the window, which Recipe checks (default: the window)", method=True),
    Capability("staged_scores", None, "staged_scores(view) -> (first, final): two-stage selection (CriticalKV): "
               "first_stage_ratio of each budget is chosen by first, then the executor fills the rest by final",
               method=True, requires=("first_stage_ratio",)),
    Capability("first_stage_ratio", None, "with staged_scores: stage one's share of each head's budget, in [0, 1]",
               kind=(int, float)),
    Capability("split_heads_on", "refined", "with staged_scores and head_allocation='adaptive': split the layer's "
               "budget across heads by the final scores ('refined') or stage one's ('base', CriticalAdaKVPress)",
               choices=("refined", "base")),
    Capability("recipe_fields", (), "Recipe fields copied into the strategy's dataclass fields of the same names "
               "(compression_ratio)", kind=tuple),
    Capability("prompt", None, "reconstruction: prompt() -> the repeat prompt's ids, or None to build them from the "
               "model's tokenizer", method=True),
    Capability("prompt_from_tokenizer", None, "reconstruction: prompt_from_tokenizer(tokenizer) -> the repeat prompt",
               method=True),
    Capability("chunks", None, "reconstruction: chunks(context, prompt) -> [(start, stop, repeat ids)], one repeat "
               "forward each", method=True),
    Capability("reconstruction_scores", None, "reconstruction: reconstruction_scores(queries, context_keys, new_keys, "
               "start, stop, scaling) -> (1, Hkv, stop - start) scores of one chunk", method=True),
    Capability("attend_and_score", None, "reconstruction: computes a repeat forward's attention and the chunk's scores "
               "in one go (KVzip's fused pass), used when fuse is true", method=True),
    Capability("fuse", True, "reconstruction with attend_and_score: compute the attention and the scores together",
               kind=bool),
])

#: Shared by allocators and executors: Recipe fields the strategy reads (the scorer's own entry names its one field).
_RECIPE_FIELDS = Capability("recipe_fields", (),
                            "Recipe fields copied into the strategy's dataclass fields of the same names", kind=tuple)

#: What the engine, the recipe and the budgets may read from an allocator beyond ``name``, ``scope`` and ``allocate``.
ALLOCATOR = Capabilities("allocator", ("name", "scope", "allocate"), [
    Capability("per_head", False, "allocate() returns L lists of Hkv budgets: every KV head its own count (needs an "
               "executor with per_head_budgets)", kind=bool),
    Capability("uses_budget", True, "False: what a row keeps follows its scores (threshold), so Recipe refuses a "
               "budget or compression_ratio", kind=bool),
    Capability("needs_window", False, "its statistic reads the observation window's queries: Recipe(window=0) is "
               "refused", kind=bool),
    Capability("check_layers", None, "check_layers(num_layers): refuse a model of another depth when the recipe is "
               "applied (a learned profile)", method=True),
    Capability("layer_statistic", None, "scope 'global': layer_statistic(view) -> (B,) float32, handed back per row "
               "as BudgetRequest.layer_statistics", method=True),
    Capability("scores_statistic", None, "scope 'global': scores_statistic(scores, forced, valid) -> (B, ...) float32, "
               "a statistic of the scorer's scores (preferred over layer_statistic)", method=True),
    _RECIPE_FIELDS,
])

#: What the engine and the recipe may read from an executor beyond ``name``, ``select`` and ``build_layer``.
EXECUTOR = Capabilities("executor", ("name", "select", "build_layer"), [
    Capability("per_head_budgets", False, "KV heads of a row may keep different numbers of entries (needed by "
               "head_allocation='adaptive' and per-head allocators)", kind=bool),
    Capability("stores_every_layer", False, "rebuilds layers that lose nothing (quantized storage): the prefill builds "
               "every compressible layer", kind=bool),
    Capability("merges_values", False, "kept values are not copies of the prefill's (evicted values merged in): the "
               "conformance suite does not compare them", kind=bool),
    _RECIPE_FIELDS,
])

#: What the engine may read from a compressed cache layer beyond :class:`~kvpress_lab.cache_layers.CompressedCacheLayer`.
CACHE_LAYER = Capabilities(
    "cache layer",
    ("update", "get_seq_length", "get_mask_sizes", "kept_counts", "head_entries", "nbytes", "prepare_decoding",
     "physical_length"),
    [
        Capability("dense_entries", None, "dense_entries() -> (B, Hkv, P, D) keys and values and their (B, P) validity: "
                   "the layer can be re-compressed (chunked prefill, decoding-time compression)", method=True),
        Capability("head_dense_entries", None, "head_dense_entries() -> (B, Hkv, P, D) keys and values and their "
                   "(B, Hkv, P) validity per head: a per-head layer re-compressed after every chunk", method=True),
    ],
)


def by_role(role: str) -> Capabilities:
    """The table of ``role`` (``"scorer"``, ``"allocator"``, ``"executor"``)."""
    return {"scorer": SCORER, "allocator": ALLOCATOR, "executor": EXECUTOR}[role]
