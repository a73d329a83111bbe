"""KVzip scoring: how much each cached entry is attended to while the model repeats its context."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.sinks import AttentionSinks
from kvpress_lab.validation import check_bool, check_int

__all__ = ["KVzipScorer", "RepeatPrompt", "REPEAT_TEXT", "CONTINUE_TEXT"]

#: The reference's instruction before the first chunk (kvpress ``KVzipPress.prepare``).
REPEAT_TEXT = "\n\nRepeat the previous context exactly."
#: The reference's instruction before every later chunk, followed by the previous chunk's last tokens.
CONTINUE_TEXT = "\n\nRepeat the part of the previous context exactly, starting with"


@dataclass(frozen=True)
class RepeatPrompt:
    """Token ids of the reconstruction prompt (no special tokens added).

    Parameters
    ----------
    repeat : tuple of int
        The instruction before the first chunk (:data:`REPEAT_TEXT`).
    continue_ : tuple of int
        The instruction before every later chunk (:data:`CONTINUE_TEXT`).
    suffix : tuple of int
        What follows the instruction before the chunk itself: the chat template's end of the
        user turn and start of the assistant turn, or ``"\\n"`` without a chat template.
    """

    repeat: tuple[int, ...]
    continue_: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_length: int = 0

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> RepeatPrompt:
        """The reference's prompt for ``tokenizer`` (a transformers tokenizer), as kvpress builds it.

        ``prefix_length`` is the token count of the chat template's text before a user message
        (0 without a template), which kvpress's ``KVzipPress`` never reconstructs.
        """
        if getattr(tokenizer, "chat_template", None) is None:
            prefix_text, suffix_text = "", "\n"
        else:  # the template's text around a user message, up to the assistant's answer
            dummy = "dummy context"
            separator = "\n" + "#" * len(dummy)
            text = tokenizer.apply_chat_template([{"role": "user", "content": dummy + separator}],
                                                 add_generation_prompt=True, tokenize=False, enable_thinking=False)
            context, suffix_text = text.split(separator)
            prefix_text = context.split(dummy)[0]

        def encode(text: str) -> tuple[int, ...]:
            return tuple(int(i) for i in tokenizer.encode(text, add_special_tokens=False))

        return cls(encode(REPEAT_TEXT), encode(CONTINUE_TEXT), encode(suffix_text), len(encode(prefix_text)))


def _check_ids(owner: str, field: str, value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{owner}.{field} must be a list of token ids (int) or None, got {type(value).__name__}.")
    return tuple(check_int(owner, f"{field}[{i}]", v, minimum=0) for i, v in enumerate(value))


@dataclass(frozen=True)
class KVzipScorer(AttentionSinks):
    """KVzip: the maximum attention an entry receives while the model reconstructs its context.

    Based on https://arxiv.org/abs/2505.23416 (KVzip: Query-Agnostic KV Cache Compression with
    Context Reconstruction), following kvpress's ``KVzipPress`` (itself a port of
    https://github.com/snu-mllab/KVzip). After the prompt's prefill the engine
    (:mod:`kvpress_lab.engine.post_prefill`) feeds the model, on a throw-away copy of the
    uncompressed cache, ``instruction + suffix + chunk`` for every chunk of ``chunk_size`` prompt
    tokens (:meth:`chunks`); the instruction is :data:`REPEAT_TEXT` for the first chunk and
    :data:`CONTINUE_TEXT` plus the previous chunk's last ``prev_postfix_size`` tokens afterwards.
    Every query ``q_i`` of that forward (all ``Q`` repeat tokens, all query heads) scores the
    chunk's cached entries by :meth:`reconstruction_scores`::

        p_i = softmax(q_i . [k_sinks, k_chunk, k_new<=i] * scaling)      # over sinks, chunk, new keys
        score_t = max over the G query heads of t's KV group and over i of p_i[t]

    where ``k_sinks`` are the first ``min(num_sinks, start)`` cached entries and ``k_new`` the repeat
    tokens' own keys (causal). The first ``num_sinks`` real tokens score 1 and are always kept
    (:meth:`~kvpress_lab.sinks.AttentionSinks.forced_keep`). The repeat tokens never reach the final cache.

    Parameters
    ----------
    num_sinks : int
        Leading real tokens always kept, ``>= 0``. Default 4 (kvpress).
    chunk_size : int
        Prompt tokens reconstructed per forward, ``>= 1``. Default 2048 (kvpress).
    prev_postfix_size : int
        Tokens of the previous chunk repeated after :data:`CONTINUE_TEXT`, ``>= 0``. Default 8.
    repeat_ids, continue_ids, suffix_ids : list of int or None
        Token ids of the prompt (:class:`RepeatPrompt`); all three or none. ``None`` (default):
        built from the model's own tokenizer, loaded from ``model.config.name_or_path``
        (:meth:`RepeatPrompt.from_tokenizer`); a model without a local tokenizer then needs them.
    skip_prefix : int or "chat_template"
        Leading real tokens never reconstructed (they keep score 0, the sinks among them 1), ``>= 0``.
        Default 0: the whole prompt is reconstructed. ``"chat_template"``: the length of the chat
        template's prefix (``RepeatPrompt.prefix_length``), kvpress's ``KVzipPress`` rule, which
        assumes the prompt starts with that prefix (kvpress's pipeline wraps the context in it).
    query_block : int
        Repeat-token queries scored together, ``>= 1`` (memory ``O(query_block * (chunk + Q))`` per
        head; the scores do not depend on it). Default 128.
    fuse : bool
        Compute the scores inside the reconstruction forward's attention (:meth:`attend_and_score`,
        one softmax for both; sdpa and flash models). Default ``True``. ``False``: the attention runs
        as usual and :meth:`reconstruction_scores` scores from its queries afterwards (the
        reference path, which eager attention always takes); the scores are the same up to rounding.

    Notes
    -----
    Cost: one more forward over about the prompt's length (plus ~15-25 instruction tokens per
    chunk), run one row at a time, attending to the whole cache, plus the scores: the repeat
    queries (the ones the attention computed, handed over by
    :mod:`~kvpress_lab.engine.query_capture`) against the chunk's keys, ``query_block`` queries at a
    time in one reused buffer. Peak memory: the uncompressed cache of every layer until the pass
    ends (as a ``"global"`` allocator), plus one row's repeat keys and values for every layer and
    one ``(1, Hq, query_block, chunk + Q)`` float32 block (``benchmarks/kvzip_speed.py`` measures
    the time).

    The ``kvzip-kvpress`` preset is kvpress's ``KVzipPress`` (``skip_prefix="chat_template"``,
    one global ranking of every layer's and head's entries with kvpress's count,
    ``global_topk(split="heads", count="kvpress")``); ``kvzip`` reconstructs the whole prompt.
    Batches and left padding are supported (kvpress: batch 1); the softmax uses the module's
    own ``scaling`` (``1/sqrt(D)`` in every supported family) in float32.

    Examples
    --------
    >>> q = torch.tensor([[[[1.0, 0.0]]]])                                      # (B=1, Hq=1, Q=1, D=2)
    >>> context = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]]])       # (1, Hkv=1, T=3, 2)
    >>> new = torch.zeros(1, 1, 1, 2)
    >>> KVzipScorer(num_sinks=1).reconstruction_scores(q, context, new, 1, 3, scaling=1.0)  # e^0, e^2 over e^1 + e^0 + e^2 + e^0
    tensor([[[0.0826, 0.6103]]])
    """

    name: ClassVar[str] = "kvzip"
    #: The engine runs :meth:`reconstruction_scores` in a pass after the prefill instead of :meth:`score`.
    needs: ClassVar[str] = "reconstruction"
    num_sinks: int = 4
    chunk_size: int = 2048
    prev_postfix_size: int = 8
    repeat_ids: Sequence[int] | None = None
    continue_ids: Sequence[int] | None = None
    suffix_ids: Sequence[int] | None = None
    skip_prefix: int | str = 0
    query_block: int = 128
    fuse: bool = True

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_sinks", self.num_sinks, minimum=0)
        check_int(owner, "query_block", self.query_block, minimum=1)
        check_bool(owner, "fuse", self.fuse)
        if self.skip_prefix != "chat_template":
            check_int(owner, "skip_prefix", self.skip_prefix, minimum=0)
        check_int(owner, "chunk_size", self.chunk_size, minimum=1)
        check_int(owner, "prev_postfix_size", self.prev_postfix_size, minimum=0)
        ids = {f: _check_ids(owner, f, getattr(self, f)) for f in ("repeat_ids", "continue_ids", "suffix_ids")}
        given = [f for f, v in ids.items() if v is not None]
        if given and len(given) != 3:
            raise ValueError(f"{owner} takes repeat_ids, continue_ids and suffix_ids together (or none of them, to use "
                             f"the model's tokenizer); got only {', '.join(given)}.")
        for field, value in ids.items():
            object.__setattr__(self, field, value)

    def prompt(self) -> RepeatPrompt | None:
        """The prompt given in the parameters, or ``None`` (then the engine uses the model's tokenizer)."""
        if self.repeat_ids is None:
            return None
        return RepeatPrompt(tuple(self.repeat_ids), tuple(self.continue_ids), tuple(self.suffix_ids))

    def prompt_from_tokenizer(self, tokenizer: Any) -> RepeatPrompt:
        """The reference's prompt for the model's ``tokenizer`` (:meth:`RepeatPrompt.from_tokenizer`)."""
        return RepeatPrompt.from_tokenizer(tokenizer)

    def score(self, view: LayerView) -> torch.Tensor:
        """Not available from one layer's view: KVzip scores come from a forward pass after the prefill."""
        raise TypeError(
            "The kvzip scorer needs a reconstruction pass after the prefill (scorer.needs == 'reconstruction'), which "
            "only the engine runs: use it through Recipe.apply / Recipe.prefill, not score(view) directly."
        )

    def skipped(self, prompt: RepeatPrompt) -> int:
        """Leading real tokens never reconstructed (``skip_prefix``, resolved against ``prompt``)."""
        return prompt.prefix_length if self.skip_prefix == "chat_template" else int(self.skip_prefix)

    def chunks(self, context: torch.Tensor, prompt: RepeatPrompt) -> list[tuple[int, int, torch.Tensor]]:
        """The reconstruction forwards of one row: ``(start, stop, repeat_ids)`` per chunk.

        ``context`` is the row's ``(n,)`` int64 real token ids; ``repeat_ids`` is ``(Q,)``:
        instruction, suffix, then ``context[start:stop]``. Chunks cover ``context[skipped:]``.
        """
        out = []
        first = min(self.skipped(prompt), context.shape[0])
        for start in range(first, context.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, context.shape[0])
            if start == first:
                instruction = torch.tensor(prompt.repeat, dtype=torch.int64)
            else:
                previous = context[max(start - self.prev_postfix_size, 0):start] if self.prev_postfix_size else context[:0]
                instruction = torch.cat([torch.tensor(prompt.continue_, dtype=torch.int64), previous.long()])
            suffix = torch.tensor(prompt.suffix, dtype=torch.int64)
            out.append((start, stop, torch.cat([instruction, suffix, context[start:stop].long()])))
        return out

    @torch.no_grad()  # scores pick entries: nothing to differentiate, and matmul(out=) refuses tensors that need grad
    def reconstruction_scores(self, queries: torch.Tensor, context_keys: torch.Tensor, new_keys: torch.Tensor,
                              start: int, stop: int, scaling: float) -> torch.Tensor:
        """Scores of context entries ``start:stop`` from one reconstruction forward.

        Parameters
        ----------
        queries : torch.Tensor
            ``(B, Hq, Q, D)`` rotated queries of the ``Q`` repeat tokens.
        context_keys : torch.Tensor
            ``(B, Hkv, n, D)`` the prefill's cached keys of the row's ``n`` real tokens.
        new_keys : torch.Tensor
            ``(B, Hkv, Q, D)`` the repeat tokens' own keys.
        start, stop : int
            The chunk, ``0 <= start < stop <= n``.
        scaling : float
            The attention's softmax scale.

        Returns
        -------
        torch.Tensor
            ``(B, Hkv, stop - start)`` float32.
        """
        batch, num_heads, length, dim = queries.shape
        kv_heads = context_keys.shape[1]
        groups = num_heads // kv_heads
        sink = min(self.num_sinks, start)
        keys = torch.cat([context_keys[:, :, :sink], context_keys[:, :, start:stop], new_keys], dim=2).float()
        old = keys.shape[2] - length  # sinks and chunk: every repeat query sees them all
        keys_t = keys.transpose(-1, -2)  # (B, Hkv, D, S)
        q = queries.float().reshape(batch, kv_heads, groups, length, dim)  # (B, Hkv, G, Q, D): head h*G + g
        block = min(self.query_block, length)
        buffer = keys.new_empty(batch * kv_heads * groups * block * keys.shape[2])  # one block's logits, reused
        future = torch.ones(block, block, dtype=torch.bool, device=keys.device).triu(1)  # (b, b) keys after the query
        best = keys.new_zeros(batch, kv_heads, stop - start)
        for a in range(0, length, block):
            b = min(a + block, length)
            width, seen = b - a, old + b  # the block's queries see the sinks, the chunk and repeat keys < b
            rows = q[:, :, :, a:b].reshape(batch, kv_heads, groups * width, dim) * scaling  # (B, Hkv, G*w, D)
            probs = buffer[: batch * kv_heads * groups * width * seen].view(batch, kv_heads, groups * width, seen)
            torch.matmul(rows, keys_t[..., :seen], out=probs)  # logits
            probs[..., old + a : seen].view(batch, kv_heads, groups, width, width).masked_fill_(
                future[:width, :width], float("-inf"))
            torch.softmax(probs, dim=-1, out=probs)
            best = torch.maximum(best, probs[..., sink : sink + stop - start].amax(dim=-2))  # max over G and queries
        return best

    @torch.no_grad()
    def attend_and_score(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, padding: torch.Tensor,
                         scaling: float, sinks: slice, chunk: slice, new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction forward's attention output and :meth:`reconstruction_scores`, from one softmax.

        The repeat tokens attend to the whole cache (causally among themselves); the scores
        renormalise each query's probabilities over the keys the reference scores with (sinks,
        chunk, repeat tokens): ``p_sub[t] = p[t] / sum_{s in sinks, chunk, new} p[s]``, the softmax
        over those keys alone. When they are every key the queries see (a prompt of one chunk), the
        divisor is 1. Queries go ``query_block`` at a time through one reused buffer; a block's
        queries never compute the repeat keys after them.

        Parameters
        ----------
        query : torch.Tensor
            ``(1, Hq, Q, D)`` rotated queries of the repeat tokens.
        key, value : torch.Tensor
            ``(1, Hkv, n + Q, D)`` the row's whole cache: ``n`` prefill entries, then the repeat tokens.
        padding : torch.Tensor
            ``(n,)`` bool, ``True`` on the prefill's padded entries (never attended).
        scaling : float
            Softmax scale.
        sinks, chunk : slice
            Key columns of the sinks and of the chunk being reconstructed.
        new : int
            ``n``, the first repeat token's column.

        Returns
        -------
        tuple of torch.Tensor
            The attention output ``(1, Q, Hq, D)`` (transformers' layout) and the chunk's scores
            ``(1, Hkv, chunk length)`` float32.
        """
        batch, num_heads, length, dim = query.shape
        kv_heads = key.shape[1]
        groups = num_heads // kv_heads
        # (B, Hkv, Q, G, D), scaled once: a block of queries is then a view (rows (q, g)), never a copy
        q = (query.float() * scaling).view(batch, kv_heads, groups, length, dim).transpose(2, 3).contiguous()
        keys_t, values = key.float().transpose(-1, -2), value.float()
        block = min(self.query_block, length)
        buffer = q.new_empty(batch * kv_heads * block * groups * (new + length))
        out = q.new_empty(batch, kv_heads, length, groups, dim)
        best = q.new_zeros(batch, kv_heads, chunk.stop - chunk.start)
        future = torch.ones(block, block, dtype=torch.bool, device=q.device).triu(1)[:, None, :]  # (b, 1, b): keys after the query
        padded = padding.to(q.device) if bool(padding.any()) else None
        whole = padded is None and sinks.stop == sinks.start and chunk.start == 0 and chunk.stop == new  # p_sub = p
        for a in range(0, length, block):
            b = min(a + block, length)
            width, seen = b - a, new + b  # the block's queries see the prefill and the repeat keys before b
            rows = q[:, :, a:b].reshape(batch, kv_heads, width * groups, dim)  # view
            probs = buffer[: batch * kv_heads * width * groups * seen].view(batch, kv_heads, width * groups, seen)
            torch.matmul(rows, keys_t[..., :seen], out=probs)  # logits (1, Hkv, w*G, seen)
            probs[..., new + a : seen].view(batch, kv_heads, width, groups, width).masked_fill_(
                future[:width, :, :width], float("-inf"))
            if padded is not None:
                probs[..., :new].masked_fill_(padded, float("-inf"))
            torch.softmax(probs, dim=-1, out=probs)
            out[:, :, a:b] = torch.matmul(probs, values[:, :, :seen]).view(batch, kv_heads, width, groups, dim)
            kept = probs[..., chunk]
            if not whole:  # renormalise over the keys the reference scores with
                kept = kept / (probs[..., sinks].sum(dim=-1) + kept.sum(dim=-1) + probs[..., new:].sum(dim=-1))[..., None]
            best = torch.maximum(best, kept.amax(dim=-2))
        output = out.transpose(1, 2).reshape(batch, length, num_heads, dim).to(query.dtype)  # (1, Q, Hq, D), head h*G + g
        return output, best
