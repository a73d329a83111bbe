"""NVIDIA kvpress's side of the fidelity harness, and the pure-torch helpers both sides share.

Run in the side environment that ``scripts/kvpress_env.sh`` builds (torch, transformers < 5.3 and
kvpress 0.5.5; never kvpress_lab), by :mod:`kvpress_lab.benchmarks.fidelity`::

    .kvpress-venv/bin/python benchmarks/kvpress_side.py run JOB_DIR           # JOB_DIR/job.json -> kvpress.pt/.json
    .kvpress-venv/bin/python benchmarks/kvpress_side.py kvzip-timing JOB_DIR  # JOB_DIR/timing.json -> kvzip_timing.json

For every run of the job (case, ratio, prompt, seed) it records the kept positions per layer and
KV head, the greedy answer to the question, the logits of the first decoding step (after the
question's last token) and wall times. The prompt flow is kvpress's pipeline
(``KVPressTextGenerationPipeline``): the context is prefilled under the press with
``model.model(input_ids=context, past_key_values=cache)``, then :func:`greedy_answer` forwards the
question at positions from the context length on (``cache.get_seq_length()`` for
``KeyRerotationPress``, as the pipeline does) and decodes greedily. Where that one-call question
forward fails on kvpress's side (``PyramidKVPress`` leaves layers of unequal lengths, and
transformers < 5.3 sizes one causal mask for all of them: kvpress's own pipeline fails the same
way), the question is fed one token per forward instead and the record's ``answer_note`` says so.

Kept positions are recovered three ways: presses that prune physically keep rows of the full
cache unchanged, so each kept key row is matched byte for byte against the rows of a prefill
without press (:func:`match_rows`); presses that mask instead (``AdaKVPress``,
``CriticalAdaKVPress``, ``KVzipPress``) leave ``module.masked_key_indices`` (the *pruned* entries,
:func:`mask_from_pruned`); ``KeyRerotationPress`` rotates its keys, so the indices handed to its
``rerotate_keys`` are recorded. ``DecodingPress`` prefills without compression, then the
continuation is teacher-forced one token per forward under the press while :class:`KeyRecorder`
(whose hooks run before the press's) records every new key row; the final cache's rows are
matched against the prefill's and the recorded rows.

Importing this module imports torch only (kvpress and transformers are imported inside the
functions that run them), so the main environment imports the helpers from here.

Shape legend: ``L`` layers, ``Hkv`` KV heads, ``T`` cached tokens, ``D`` head dim, ``V`` vocabulary.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = [
    "RecoveryError", "match_rows", "kept_mask", "mask_from_pruned", "mask_from_kept_indices", "jaccard",
    "cache_keyword", "greedy_answer", "greedy_continue", "teacher_force", "KeyRecorder", "force_and_answer",
    "interleaved_seconds",
    "build_press", "run_job", "kvzip_timing", "main",
]

HeadKeys = Callable[[object, int], torch.Tensor]
"""``head_keys(cache_layer, head) -> (n, D)``: the key rows a cache layer holds for one KV head, in token order."""


class RecoveryError(ValueError):
    """Kept positions cannot be recovered: a compressed key row matches no row, or several, of the full cache."""


# -- recovering kept positions ----------------------------------------------------------------


def _row_bytes(rows: torch.Tensor) -> torch.Tensor:
    """``(N, D * itemsize)`` uint8: the bytes of each row of ``rows`` ``(N, D)``."""
    return rows.detach().contiguous().view(torch.uint8).reshape(rows.shape[0], -1)


def _hash_rows(data: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 hash of each byte row ``(N, nbytes)`` (equal bytes, equal hash; equality is checked after)."""
    weights = torch.randint(1, 2**31, (data.shape[1],), generator=torch.Generator().manual_seed(data.shape[1]),
                            dtype=torch.int64)
    return (data.to(torch.int64) * weights).sum(dim=1)  # wraps on overflow: still a function of the bytes


def match_rows(rows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Position in ``reference`` of each row of ``rows``, by exact (byte for byte) equality.

    Parameters
    ----------
    rows : torch.Tensor
        ``(n, D)`` rows to find (one KV head's kept keys).
    reference : torch.Tensor
        ``(N, D)`` rows of the uncompressed cache (the same head), same dtype.

    Returns
    -------
    torch.Tensor
        ``(n,)`` int64 positions, distinct.

    Raises
    ------
    RecoveryError
        A row matches no reference row (the keys were changed: rotated, merged, another
        prompt), matches several identical reference rows, or two rows match the same one.

    Examples
    --------
    >>> reference = torch.arange(12.0).reshape(4, 3)
    >>> match_rows(reference[[3, 1]], reference).tolist()
    [3, 1]
    """
    if rows.dim() != 2 or reference.dim() != 2 or rows.shape[1] != reference.shape[1] or rows.dtype != reference.dtype:
        raise ValueError(f"Expected rows (n, D) and reference (N, D) of one dtype, got {tuple(rows.shape)} {rows.dtype} "
                         f"and {tuple(reference.shape)} {reference.dtype}.")
    if rows.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    if reference.shape[0] == 0:
        raise RecoveryError(f"{rows.shape[0]} rows to find in an empty reference.")
    ref_bytes, row_bytes = _row_bytes(reference.cpu()), _row_bytes(rows.cpu())
    ref_hash, row_hash = _hash_rows(ref_bytes), _hash_rows(row_bytes)
    sorted_hash, order = torch.sort(ref_hash, stable=True)
    slot = torch.searchsorted(sorted_hash, row_hash).clamp(max=len(sorted_hash) - 1)  # leftmost equal hash
    positions = order[slot]
    found = (sorted_hash[slot] == row_hash) & (ref_bytes[positions] == row_bytes).all(dim=1)
    if not bool(found.all()):
        missing = int((~found).sum())
        raise RecoveryError(f"{missing} of {rows.shape[0]} compressed key rows match no row of the full cache "
                            "(keys changed after the prefill: re-rotated, merged, or another prompt's cache).")
    following = (slot + 1).clamp(max=len(sorted_hash) - 1)
    twins = (following != slot) & (sorted_hash[following] == row_hash)
    if bool(twins.any()) and bool((ref_bytes[order[following[twins]]] == row_bytes[twins]).all(dim=1).any()):
        raise RecoveryError("a compressed key row equals several rows of the full cache: its position is ambiguous.")
    if positions.unique().numel() != positions.numel():
        raise RecoveryError("two compressed key rows match the same position of the full cache.")
    return positions


def kept_mask(layers: Sequence[object], head_keys: HeadKeys, reference: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(L, Hkv, T)`` bool: which positions of the full cache each layer and KV head holds.

    Parameters
    ----------
    layers : sequence
        The compressed cache's layers (``cache.layers``), one per entry of ``reference``.
    head_keys : HeadKeys
        ``head_keys(layer, head) -> (n, D)`` key rows the layer holds for that head.
    reference : sequence of torch.Tensor
        ``L`` tensors ``(Hkv, T, D)``: the uncompressed cache's keys of each layer.
    """
    if len(layers) != len(reference):
        raise ValueError(f"Expected one reference per cache layer, got {len(reference)} for {len(layers)} layers.")
    num_heads, length = reference[0].shape[:2]
    mask = torch.zeros(len(layers), num_heads, length, dtype=torch.bool)
    for idx, (layer, keys) in enumerate(zip(layers, reference)):
        for head in range(num_heads):
            try:
                mask[idx, head, match_rows(head_keys(layer, head), keys[head])] = True
            except RecoveryError as exc:
                raise RecoveryError(f"layer {idx}, KV head {head}: {exc}") from None
    return mask


def mask_from_pruned(pruned: Sequence[torch.Tensor], num_heads: int, length: int) -> torch.Tensor:
    """``(Hkv, T)`` bool kept mask from kvpress's ``masked_key_indices`` ``(batch, head, seq)`` of *pruned* entries."""
    batch, heads, seq = (torch.as_tensor(part).long().cpu() for part in pruned)
    if bool((batch != 0).any()):
        raise ValueError("Expected masked_key_indices of batch row 0 only (the harness runs batch 1).")
    mask = torch.ones(num_heads, length, dtype=torch.bool)
    mask[heads, seq] = False
    return mask


def mask_from_kept_indices(indices: torch.Tensor, length: int) -> torch.Tensor:
    """``(Hkv, T)`` bool kept mask from ``(Hkv, K)`` kept positions."""
    mask = torch.zeros(indices.shape[0], length, dtype=torch.bool)
    mask.scatter_(1, indices.long().cpu(), True)
    return mask


def jaccard(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``|a & b| / |a | b|`` over the last dimension of two bool masks ``(..., T)`` (1 when both are empty).

    >>> jaccard(torch.tensor([True, True, False]), torch.tensor([True, False, True])).item()
    0.3333333432674408
    """
    if first.shape != second.shape:
        raise ValueError(f"Expected two masks of one shape, got {tuple(first.shape)} and {tuple(second.shape)}.")
    union = (first | second).sum(dim=-1)
    both = (first & second).sum(dim=-1)
    return torch.where(union == 0, torch.ones_like(union, dtype=torch.float32), both.float() / union.clamp(min=1).float())


# -- the decoding loop (kvpress pipeline's generate_answer) -----------------------------------


def cache_keyword(model: torch.nn.Module) -> str:
    """``"cache"`` where ``model.forward`` names the cache so (transformers >= 5.24), else ``"past_key_values"``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def greedy_continue(model: torch.nn.Module, cache: object, first_id: int, position: int, steps: int,
                    eos_token_ids: Sequence[int]) -> list[int]:
    """``[first_id]`` then up to ``steps`` greedy tokens, each fed at ``position, position + 1, ...``; stops after an EOS."""
    keyword = cache_keyword(model)
    generated = [int(first_id)]
    for step in range(steps):
        out = model(input_ids=torch.tensor([[generated[-1]]]), position_ids=torch.tensor([[position + step]]),
                    **{keyword: cache})
        generated.append(int(out.logits[0, -1].argmax()))
        if generated[-1] in eos_token_ids:
            break
    return generated


@torch.no_grad()
def greedy_answer(model: torch.nn.Module, cache: object, question_ids: torch.Tensor, context_length: int,
                  max_new_tokens: int, eos_token_ids: Sequence[int], one_call: bool = True) -> tuple[list[int], torch.Tensor]:
    """Answer ids and the first step's logits ``(V,)`` float32, as kvpress's ``generate_answer`` computes them.

    The question ``(1, Q)`` is forwarded at positions ``context_length ... context_length + Q - 1``
    in one call (``one_call=False``: one token per call, :func:`teacher_force`); its last logits
    give the first token (kept even if it is an EOS, as kvpress does), then up to
    ``max_new_tokens - 1`` one-token steps follow, stopping after an EOS.
    """
    if one_call:
        positions = torch.arange(context_length, context_length + question_ids.shape[1]).unsqueeze(0)
        out = model(input_ids=question_ids, position_ids=positions, logits_to_keep=1, **{cache_keyword(model): cache})
        first = out.logits[0, -1].float().clone()
    else:
        first = teacher_force(model, cache, question_ids, context_length)
    ids = greedy_continue(model, cache, int(first.argmax()), context_length + question_ids.shape[1],
                          max_new_tokens - 1, eos_token_ids)
    return ids, first


@torch.no_grad()
def teacher_force(model: torch.nn.Module, cache: object, ids: torch.Tensor, position: int) -> torch.Tensor:
    """Feed ``ids`` ``(1, M)`` one token per forward at ``position, position + 1, ...``; the last logits ``(V,)`` float32."""
    keyword = cache_keyword(model)
    logits = None
    for step in range(ids.shape[1]):
        out = model(input_ids=ids[:, step:step + 1], position_ids=torch.tensor([[position + step]]), **{keyword: cache})
        logits = out.logits[0, -1]
    if logits is None:
        raise ValueError("teacher_force needs at least one token, got none.")
    return logits.float().clone()


class KeyRecorder:
    """Forward hooks recording the key row each KV head cached in every one-token attention call.

    Its hooks are prepended to the module's forward hooks, so each new key row is read before a
    press's or a session's hook can compress it away (kvpress_lab's hooks may have been registered
    on the model long before, by an earlier compressed cache).

    Parameters
    ----------
    modules : sequence of torch.nn.Module
        The attention modules, one per layer, each with its ``layer_idx``.
    head_keys : HeadKeys
        Key rows a cache layer holds for a head, in token order (the newest last).
    num_heads : int
        ``Hkv``.
    """

    def __init__(self, modules: Sequence[torch.nn.Module], head_keys: HeadKeys, num_heads: int):
        self.modules, self.head_keys, self.num_heads = list(modules), head_keys, num_heads
        self.rows: list[list[torch.Tensor]] = [[] for _ in self.modules]  # per layer: (Hkv, D) per step
        self.active = False
        self._handles: list[object] = []

    def __enter__(self) -> KeyRecorder:
        for ordinal, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._hook(ordinal), with_kwargs=True, prepend=True))
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, ordinal: int) -> Callable:
        def record(module, args, kwargs, output) -> None:
            if not self.active:
                return
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            if hidden.shape[1] != 1:
                raise ValueError(f"KeyRecorder records one-token steps; got a {hidden.shape[1]}-token forward.")
            cache = kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")
            layer = cache.layers[module.layer_idx]
            self.rows[ordinal].append(torch.stack([self.head_keys(layer, h)[-1] for h in range(self.num_heads)]).clone())
        return record

    def keys(self, ordinal: int) -> torch.Tensor:
        """``(Hkv, M, D)``: the rows recorded for layer ``ordinal``, in step order."""
        return torch.stack(self.rows[ordinal], dim=1)


def force_and_answer(model: torch.nn.Module, cache: object, recorder: KeyRecorder, prefill_keys: Sequence[torch.Tensor],
                     continuation: torch.Tensor, max_new_tokens: int, eos_token_ids: Sequence[int]) -> dict:
    """The decoding case after an uncompressed prefill, under compression (a press or a session) and ``recorder``.

    Teacher-forces ``continuation`` ``(1, M)`` from ``T`` on (``prefill_keys``: ``L`` tensors
    ``(Hkv, T, D)``) while ``recorder`` records each new key row, recovers the final cache's kept
    positions ``(L, Hkv, T + M)`` against the prefill's and the recorded rows, then continues greedily.
    """
    length, steps = prefill_keys[0].shape[1], continuation.shape[1]
    recorder.active = True
    start = time.perf_counter()
    first = teacher_force(model, cache, continuation, length)
    forced_s = time.perf_counter() - start
    recorder.active = False
    reference = [torch.cat([keys, recorder.keys(idx)], dim=1) for idx, keys in enumerate(prefill_keys)]
    kept = kept_mask(cache.layers, recorder.head_keys, reference)
    start = time.perf_counter()
    answer = greedy_continue(model, cache, int(first.argmax()), length + steps, max_new_tokens - 1, eos_token_ids)
    return {"kept": kept, "answer_ids": answer, "first_logits": first, "forced_s": forced_s,
            "answer_s": time.perf_counter() - start, "recovery": "byte match (prefill + recorded decoding keys)",
            "context_length": length}


def interleaved_seconds(settings: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each setting, run interleaved ``repeats`` times (a, b, a, b, ...)."""
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, run in settings.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


# -- kvpress (side environment only) ----------------------------------------------------------


def build_press(case: str, ratio: float | None, decoding: Mapping[str, int] | None = None) -> object:
    """kvpress's press for a case of the fidelity mapping (``docs/howto``: ``kvpress-fidelity-table``)."""
    import kvpress as kp

    single = {"snapkv": kp.SnapKVPress, "pyramidkv": kp.PyramidKVPress, "streaming_llm": kp.StreamingLLMPress,
              "knorm": kp.KnormPress, "tova": kp.TOVAPress, "observed_attention": kp.ObservedAttentionPress,
              "expected_attention": kp.ExpectedAttentionPress, "keydiff": kp.KeyDiffPress, "lagkv": kp.LagKVPress,
              "non_causal": kp.NonCausalAttnPress, "leverage": kp.LeverageScorePress, "compactor": kp.CompactorPress,
              "cur": kp.CURPress, "kvzip": kp.KVzipPress}
    wrapped = {"adakv_snapkv": lambda r: kp.AdaKVPress(kp.SnapKVPress(compression_ratio=r)),
               "critical_snapkv": lambda r: kp.CriticalKVPress(kp.SnapKVPress(compression_ratio=r)),
               "critical_adakv_snapkv": lambda r: kp.CriticalAdaKVPress(kp.SnapKVPress(compression_ratio=r)),
               "chunkkv": lambda r: kp.ChunkKVPress(press=kp.SnapKVPress(compression_ratio=r), chunk_length=20),
               "merging_snapkv": lambda r: kp.MergingPress(kp.SnapKVPress(compression_ratio=r)),
               "block_keydiff": lambda r: kp.BlockPress(press=kp.KeyDiffPress(compression_ratio=r), block_size=128),
               "rerotated_streaming_llm": lambda r: kp.KeyRerotationPress(kp.StreamingLLMPress(compression_ratio=r)),
               "random": lambda r: kp.RandomPress(compression_ratio=r, seed=0)}
    if case == "decoding_knorm":
        if decoding is None:
            raise ValueError("Case 'decoding_knorm' needs the job's decoding parameters, got none.")
        return kp.DecodingPress(base_press=kp.KnormPress(), compression_interval=decoding["compression_interval"],
                                target_size=decoding["target_size"])
    if case in single:
        return single[case](compression_ratio=ratio)
    if case in wrapped:
        return wrapped[case](ratio)
    raise ValueError(f"Unknown fidelity case {case!r}; expected one of {sorted([*single, *wrapped, 'decoding_knorm'])}.")


def _dense_head_keys(layer: object, head: int) -> torch.Tensor:
    return layer.keys[0, head]


def _full_keys(model: torch.nn.Module, context: torch.Tensor) -> list[torch.Tensor]:
    """``L`` tensors ``(Hkv, T, D)``: the keys of a prefill without press (``model.model``, as the pipeline)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=context, past_key_values=cache)
    return [layer.keys[0].clone() for layer in cache.layers]


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in model.model.layers]


def _clear_masks(model: torch.nn.Module) -> None:
    for module in _attention_modules(model):
        module.masked_key_indices = None  # kvpress's head-wise masks of a previous run must not leak


@contextmanager
def _recorded_rerotation(press: object) -> Iterator[dict[int, torch.Tensor]]:
    """Record, per layer, the ``(Hkv, K)`` kept indices a ``KeyRerotationPress`` re-rotates its keys to."""
    original = type(press).rerotate_keys
    recorded: dict[int, torch.Tensor] = {}

    def record(module, indices, keys):
        recorded[int(module.layer_idx)] = indices[0].detach().cpu().clone()
        return original(module, indices, keys)

    press.rerotate_keys = record  # on this instance only
    try:
        yield recorded
    finally:
        del press.rerotate_keys


def _prefill_run(model, press, context, question, reference, seed: int, job: Mapping) -> dict:
    import kvpress as kp
    from transformers import DynamicCache

    length = context.shape[1]
    rerotated = isinstance(press, kp.KeyRerotationPress)
    _clear_masks(model)
    cache = DynamicCache()
    recording = _recorded_rerotation(press) if rerotated else _nothing()
    with torch.no_grad(), recording as recorded:
        torch.manual_seed(seed)
        start = time.perf_counter()
        with press(model):
            model.model(input_ids=context, past_key_values=cache)
        prefill_s = time.perf_counter() - start
    if isinstance(press, (kp.AdaKVPress, kp.CriticalAdaKVPress, kp.KVzipPress)):
        if cache.get_seq_length() != length:
            raise RecoveryError(f"a masking press left {cache.get_seq_length()} cached entries, expected {length}.")
        masks = [module.masked_key_indices for module in _attention_modules(model)]
        kept = torch.stack([torch.ones(reference[0].shape[:2], dtype=torch.bool) if pruned is None
                            else mask_from_pruned(pruned, reference[0].shape[0], length) for pruned in masks])
        recovery = "masked_key_indices"
    elif rerotated:
        kept = torch.stack([mask_from_kept_indices(recorded[idx], length) for idx in range(len(reference))])
        recovery = "rerotate_keys indices"
    else:
        kept, recovery = kept_mask(cache.layers, _dense_head_keys, reference), "byte match"
    context_length = cache.get_seq_length() if rerotated else length  # the pipeline's rule
    held = [layer.keys.shape[2] for layer in cache.layers]
    start = time.perf_counter()
    try:
        answer, first = greedy_answer(model, cache, question, context_length, job["max_new_tokens"], job["eos_token_ids"])
        note = None
    except RuntimeError as exc:  # layers of unequal lengths: transformers < 5.3 sizes one mask for all of them
        for layer, count in zip(cache.layers, held):
            layer.keys, layer.values = layer.keys[:, :, :count], layer.values[:, :, :count]  # drop the failed call's
        answer, first = greedy_answer(model, cache, question, context_length, job["max_new_tokens"],
                                      job["eos_token_ids"], one_call=False)
        note = f"question fed token by token: kvpress's one-call question forward fails here ({exc})"
    answer_s = time.perf_counter() - start
    _clear_masks(model)
    return {"kept": kept, "answer_ids": answer, "first_logits": first, "prefill_s": prefill_s, "answer_s": answer_s,
            "recovery": recovery, "context_length": context_length, "answer_note": note}


def _decoding_run(model, press, context, continuation, seed: int, job: Mapping) -> dict:
    from transformers import DynamicCache

    cache = DynamicCache()
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        model.model(input_ids=context, past_key_values=cache)  # no compression of the prefill (DecodingPress)
    prefill_s = time.perf_counter() - start
    prefill_keys = [layer.keys[0].clone() for layer in cache.layers]
    recorder = KeyRecorder(_attention_modules(model), _dense_head_keys, prefill_keys[0].shape[0])
    with recorder, press(model):  # the recorder's hooks first
        record = force_and_answer(model, cache, recorder, prefill_keys, continuation, job["max_new_tokens"],
                                  job["eos_token_ids"])
    return {**record, "prefill_s": prefill_s}


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


class _Models:
    """The checkpoint loaded once per attention implementation (``observed_attention`` needs eager)."""

    def __init__(self, path: str):
        self.path, self._loaded = path, {}

    def get(self, implementation: str) -> torch.nn.Module:
        if implementation not in self._loaded:
            from transformers import AutoModelForCausalLM

            self._loaded[implementation] = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=torch.float32, attn_implementation=implementation, local_files_only=True).eval()
        return self._loaded[implementation]


class _OncePerMessage(logging.Filter):
    """Lets each distinct message through once (kvpress warns at every press it builds)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_OncePerMessage())
    handler.setFormatter(logging.Formatter("kvpress: %(message)s"))
    kvpress_logger = logging.getLogger("kvpress")
    kvpress_logger.addHandler(handler)
    kvpress_logger.propagate = False


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("kvpress", "transformers", "torch")}


def run_job(job_dir: Path) -> list[dict]:
    """Run every run of ``job_dir/job.json`` (ids in ``job_ids.pt``); write ``kvpress.pt`` and ``kvpress.json`` there."""
    from tqdm import tqdm

    _quiet_transformers()
    job = json.loads((job_dir / "job.json").read_text())
    ids = torch.load(job_dir / "job_ids.pt")
    torch.set_num_threads(job["threads"])
    models = _Models(job["model_path"])
    references: dict[tuple[str, str], list[torch.Tensor]] = {}
    records = []
    for run in tqdm(job["runs"], desc="kvpress side", file=sys.stderr, dynamic_ncols=True):
        record = dict(run)
        try:
            implementation = "eager" if run["case"] == "observed_attention" else "sdpa"
            model = models.get(implementation)
            press = build_press(run["case"], run["ratio"], job.get("decoding"))
            prompt = ids["prompts"][run["prompt"]]
            if run["case"] == "decoding_knorm":
                record.update(_decoding_run(model, press, prompt["context_ids"], ids["continuation_ids"], run["seed"], job))
            else:
                key = (run["prompt"], implementation)
                if key not in references:
                    references[key] = _full_keys(model, prompt["context_ids"])
                record.update(_prefill_run(model, press, prompt["context_ids"], prompt["question_ids"], references[key],
                                           run["seed"], job))
            record["error"] = None
        except Exception as exc:  # recorded and reported in the table; the other runs go on
            record["error"] = f"{type(exc).__name__}: {exc}"
        records.append(record)
    meta = {"versions": _versions(), "threads": torch.get_num_threads(), "model_path": job["model_path"]}
    torch.save({"runs": records, "meta": meta}, job_dir / "kvpress.pt")
    scalars = [{k: v for k, v in r.items() if not isinstance(v, torch.Tensor)} for r in records]
    (job_dir / "kvpress.json").write_text(json.dumps({"runs": scalars, "meta": meta}, indent=1))
    return records


def kvzip_timing(job_dir: Path) -> dict:
    """``(prefill + KVzipPress scoring and compression) / plain prefill``, medians of interleaved repeats.

    Reads ``job_dir/timing.json`` (``model_path``, ``threads``, ``repeats``, ``ratio``) and the
    ``(1, T)`` ids ``job_dir/timing_ids.pt``; writes ``kvzip_timing.json``. Plain prefill:
    ``model.model(input_ids=ids, past_key_values=DynamicCache())``.
    """
    import kvpress as kp
    from transformers import DynamicCache

    _quiet_transformers()
    job = json.loads((job_dir / "timing.json").read_text())
    ids = torch.load(job_dir / "timing_ids.pt")
    torch.set_num_threads(job["threads"])
    model = _Models(job["model_path"]).get("sdpa")
    press = kp.KVzipPress(compression_ratio=job["ratio"])

    def plain():
        model.model(input_ids=ids, past_key_values=DynamicCache())

    def kvzip():
        with press(model):
            model.model(input_ids=ids, past_key_values=DynamicCache())

    with torch.no_grad():
        plain()  # warm-up
        seconds = interleaved_seconds({"plain": plain, "kvzip": kvzip}, job["repeats"])
    _clear_masks(model)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {"length": int(ids.shape[1]), "threads": torch.get_num_threads(), "repeats": job["repeats"],
              "ratio": job["ratio"], "seconds": seconds, "median_s": medians,
              "kvzip_over_plain": medians["kvzip"] / medians["plain"], "versions": _versions()}
    (job_dir / "kvzip_timing.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``run JOB_DIR`` or ``kvzip-timing JOB_DIR`` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "kvzip-timing"))
    parser.add_argument("job_dir", type=Path, help="folder holding the job the main harness wrote")
    args = parser.parse_args(argv)
    if args.command == "run":
        run_job(args.job_dir)
    else:
        print(json.dumps(kvzip_timing(args.job_dir), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
