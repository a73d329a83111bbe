"""KVzip scoring: how much each cached entry is attended to while the model repeats its context."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kvpress_lab.layer_view import LayerView
from kvpress_lab.validation import check_int

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

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> RepeatPrompt:
        """The reference's prompt for ``tokenizer`` (a transformers tokenizer), as kvpress builds it."""
        if getattr(tokenizer, "chat_template", None) is None:
            suffix_text = "\n"
        else:  # the template's text between a user message and the assistant's answer
            dummy = "dummy context"
            separator = "\n" + "#" * len(dummy)
            text = tokenizer.apply_chat_template([{"role": "user", "content": dummy + separator}],
                                                 add_generation_prompt=True, tokenize=False, enable_thinking=False)
            suffix_text = text.split(separator)[1]

        def encode(text: str) -> tuple[int, ...]:
            return tuple(int(i) for i in tokenizer.encode(text, add_special_tokens=False))

        return cls(encode(REPEAT_TEXT), encode(CONTINUE_TEXT), encode(suffix_text))


def _check_ids(owner: str, field: str, value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{owner}.{field} must be a list of token ids (int) or None, got {type(value).__name__}.")
    return tuple(check_int(owner, f"{field}[{i}]", v, minimum=0) for i, v in enumerate(value))


@dataclass(frozen=True)
class KVzipScorer:
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

    where ``k_sinks`` are the first ``min(n_sink, start)`` cached entries and ``k_new`` the repeat
    tokens' own keys (causal). The first ``n_sink`` real tokens score 1 and are always kept
    (:meth:`forced_keep`). The repeat tokens never reach the final cache.

    Parameters
    ----------
    n_sink : int
        Leading real tokens always kept, ``>= 0``. Default 4 (kvpress).
    chunk_size : int
        Prompt tokens reconstructed per forward, ``>= 1``. Default 2048 (kvpress).
    prev_postfix_size : int
        Tokens of the previous chunk repeated after :data:`CONTINUE_TEXT`, ``>= 0``. Default 8.
    repeat_ids, continue_ids, suffix_ids : list of int or None
        Token ids of the prompt (:class:`RepeatPrompt`); all three or none. ``None`` (default):
        built from the model's own tokenizer, loaded from ``model.config.name_or_path``
        (:meth:`RepeatPrompt.from_tokenizer`); a model without a local tokenizer then needs them.

    Notes
    -----
    Cost: one more forward over about the prompt's length (plus ~15-25 instruction tokens per
    chunk), run one row at a time, attending to the whole cache, so about 2x the prefill's time or
    more; peak memory: the uncompressed cache of every layer until the pass ends (as a
    ``"global"`` allocator), plus one row's repeat keys and values for every layer and one layer's
    ``(1, Hq, Q, Q + chunk)`` float32 attention. Measured on the embedded SmolLM2-135M (CPU, float32,
    2 threads, a 256-token prompt, ``kvzip`` preset at ratio 0.5, on a heavily shared machine, so
    only the ratios mean anything): prefill + kvzip / plain prefill = 2.50 (medians of 3
    interleaved repeats; the 21 instruction tokens weigh more on a short prompt); peak RSS 1146 MiB
    vs 1043 MiB for the plain prefill and 1061 MiB for ``snapkv`` (the model alone: 484 MiB).

    Differences from kvpress: the whole prompt is reconstructed (kvpress skips its chat
    template's prefix, whose entries then score 0 except the sinks); the softmax uses the
    module's own ``scaling`` (``1/sqrt(D)`` except Gemma3) and float32; batches and left padding
    are supported (kvpress: batch 1); budget allocation is the recipe's allocator (the
    ``kvzip`` preset's ``global_topk`` with per-head splits is kvpress's ``layerwise=False``).

    Examples
    --------
    >>> q = torch.tensor([[[[1.0, 0.0]]]])                                      # (B=1, Hq=1, Q=1, D=2)
    >>> context = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]]])       # (1, Hkv=1, T=3, 2)
    >>> new = torch.zeros(1, 1, 1, 2)
    >>> KVzipScorer(n_sink=1).reconstruction_scores(q, context, new, 1, 3, scaling=1.0)  # e^0, e^2 over e^1 + e^0 + e^2 + e^0
    tensor([[[0.0826, 0.6103]]])
    """

    name: ClassVar[str] = "kvzip"
    #: The engine runs :meth:`reconstruction_scores` in a pass after the prefill instead of :meth:`score`.
    needs: ClassVar[str] = "reconstruction"
    n_sink: int = 4
    chunk_size: int = 2048
    prev_postfix_size: int = 8
    repeat_ids: Sequence[int] | None = None
    continue_ids: Sequence[int] | None = None
    suffix_ids: Sequence[int] | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "n_sink", self.n_sink, minimum=0)
        check_int(owner, "chunk_size", self.chunk_size, minimum=1)
        check_int(owner, "prev_postfix_size", self.prev_postfix_size, minimum=0)
        ids = {f: _check_ids(owner, f, getattr(self, f)) for f in ("repeat_ids", "continue_ids", "suffix_ids")}
        given = [f for f, v in ids.items() if v is not None]
        if given and len(given) != 3:
            raise ValueError(f"{owner} takes repeat_ids, continue_ids and suffix_ids together (or none of them, to use "
                             f"the model's tokenizer); got only {', '.join(given)}.")
        for field, value in ids.items():
            object.__setattr__(self, field, value)

    def minimum_budget(self, window: int) -> int:
        """Smallest budget holding the sinks and the observation window: ``n_sink + window``."""
        return self.n_sink + window

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

    def forced_keep(self, view: LayerView) -> torch.Tensor:
        """``(B, Hkv, T)`` bool: ``True`` on the first ``n_sink`` real tokens of each row."""
        valid = view.valid.to(view.device)  # (B, T)
        sinks = valid & (valid.long().cumsum(dim=-1) <= self.n_sink)  # (B, T)
        return sinks[:, None, :].expand(-1, view.num_kv_heads, -1).contiguous()

    def chunks(self, context: torch.Tensor, prompt: RepeatPrompt) -> list[tuple[int, int, torch.Tensor]]:
        """The reconstruction forwards of one row: ``(start, stop, repeat_ids)`` per chunk.

        ``context`` is the row's ``(n,)`` int64 real token ids; ``repeat_ids`` is ``(Q,)``:
        instruction, suffix, then ``context[start:stop]``.
        """
        out = []
        for start in range(0, context.shape[0], self.chunk_size):
            stop = min(start + self.chunk_size, context.shape[0])
            if start == 0:
                instruction = torch.tensor(prompt.repeat, dtype=torch.int64)
            else:
                previous = context[max(start - self.prev_postfix_size, 0):start] if self.prev_postfix_size else context[:0]
                instruction = torch.cat([torch.tensor(prompt.continue_, dtype=torch.int64), previous.long()])
            suffix = torch.tensor(prompt.suffix, dtype=torch.int64)
            out.append((start, stop, torch.cat([instruction, suffix, context[start:stop].long()])))
        return out

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
        sink = min(self.n_sink, start)
        keys = torch.cat([context_keys[:, :, :sink], context_keys[:, :, start:stop], new_keys], dim=2).float()
        q = queries.float().reshape(batch, kv_heads, num_heads // kv_heads, length, dim)  # (B, Hkv, G, Q, D)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", q, keys) * scaling  # (B, Hkv, G, Q, S)
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        visible = torch.cat([torch.ones(length, keys.shape[2] - length, dtype=torch.bool, device=q.device), causal], dim=1)
        probs = logits.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        return probs[..., sink : sink + stop - start].amax(dim=(2, 3))  # (B, Hkv, stop - start)
