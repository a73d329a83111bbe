"""The ``kvpress-lab`` lm-eval model: lm-eval's ``hf`` model with a recipe applied around every request.

See :mod:`kvpress_lab.integrations.lm_eval` for what is compressed per request type.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

from kvpress_lab.integrations.lm_eval.recipe_args import build_recipe
from kvpress_lab.recipe import Recipe

__all__ = ["EMBEDDED_NAMES", "KVPressLabLM", "PrefillRecord"]

# Under lm-eval's logger, so its command line (which configures only "lm_eval") shows the compression summary.
logger = logging.getLogger("lm_eval.models.kvpress_lab")

#: ``pretrained=`` values selecting the embedded model (:func:`kvpress_lab.models.load_model`).
EMBEDDED_NAMES = ("embedded", "smollm2-135m-instruct")


@dataclass(frozen=True)
class PrefillRecord:
    """One compressed prefill: what each row held before and after.

    Attributes
    ----------
    kind : str
        ``"generate_until"`` or ``"loglikelihood"``.
    prompt_tokens : tuple of int
        ``n_b``: real (unpadded) prompt tokens of each row.
    kept : tuple of float
        Entries each row keeps per compressible layer (and KV head), averaged over the layers:
        ``n_b`` when nothing was evicted.
    """

    kind: str
    prompt_tokens: tuple[int, ...]
    kept: tuple[float, ...]

    @property
    def evicted(self) -> bool:
        """Whether any row dropped entries in any layer."""
        return any(k < n for k, n in zip(self.kept, self.prompt_tokens))


class KVPressLabLM(HFLM):
    """lm-eval's ``hf`` model with a kvpress_lab recipe applied around every request.

    Parameters
    ----------
    pretrained : str or transformers.PreTrainedModel
        What lm-eval's ``hf`` model takes (hub id, local folder, model instance), or
        ``"embedded"``: the embedded model, loaded offline by :func:`kvpress_lab.models.load_model`.
    recipe, recipe_json, budget, compression_ratio, window :
        See :func:`build_recipe`. No recipe, or ``recipe=full``: no compression.
    embedded : bool
        ``True``: same as ``pretrained="embedded"``.
    **kwargs
        Everything else goes to lm-eval's ``HFLM`` (``batch_size``, ``max_length``,
        ``device``, ``dtype``, ...).

    Attributes
    ----------
    recipe : Recipe or None
    records : list[PrefillRecord]
        One entry per compressed prefill, in the order they ran.
    """

    def __init__(
        self,
        pretrained: Any = "embedded",
        *,
        recipe: str | Recipe | None = None,
        recipe_json: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        budget: int | None = None,
        compression_ratio: float | None = None,
        window: int | None = None,
        embedded: bool = False,
        **kwargs: Any,
    ) -> None:
        self.recipe = build_recipe(recipe, recipe_json, budget=budget, compression_ratio=compression_ratio, window=window)
        self.records: list[PrefillRecord] = []
        if embedded or (isinstance(pretrained, str) and pretrained.lower() in EMBEDDED_NAMES):
            pretrained, tokenizer = _load_embedded(kwargs)
            kwargs.setdefault("tokenizer", tokenizer)
        super().__init__(pretrained=pretrained, **kwargs)
        if self.recipe is not None:
            if self.backend != "causal":
                raise ValueError(f"kvpress_lab compresses decoder-only (causal) models; this one has backend {self.backend!r}.")
            from kvpress_lab.engine.families import ModelAdapter

            ModelAdapter.for_model(self.model)  # an unsupported family fails now, not at the first request

    # -- bookkeeping ------------------------------------------------------------------------

    @property
    def compressed_prefills(self) -> int:
        """Prefills run under the recipe (one per generation batch, one per distinct loglikelihood context)."""
        return len(self.records)

    def compression_summary(self) -> str:
        """One line: prefills compressed, mean prompt tokens and mean entries kept per layer."""
        if self.recipe is None:
            return "kvpress-lab: no recipe (full cache)."
        rows = [(n, k) for r in self.records for n, k in zip(r.prompt_tokens, r.kept)]
        if not rows:
            return f"kvpress-lab: recipe {self._recipe_name()}: no prefill ran yet."
        tokens = sum(n for n, _ in rows) / len(rows)
        kept = sum(k for _, k in rows) / len(rows)
        return (f"kvpress-lab: recipe {self._recipe_name()}: {len(self.records)} compressed prefills, {len(rows)} prompts, "
                f"mean {tokens:.1f} prompt tokens, mean {kept:.1f} entries kept per layer ({kept / tokens:.1%}).")

    def _recipe_name(self) -> str:
        r = self.recipe
        size = f"budget={r.budget}" if r.compression_ratio is None else f"compression_ratio={r.compression_ratio}"
        return f"{r.preset_name or f'{r.allocator}+{r.scorer}'} ({size}, window={r.window})"

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["kvpress_lab_recipe"] = None if self.recipe is None else self.recipe.to_dict()
        return info

    def _recording(self, session: Any, kind: str):
        """A forward hook on the decoder recording the budget plan of each compressed prefill.

        It runs after the session's own end-of-forward hook, when ``session.plan`` holds the
        plan of the forward that just ran (``None`` on decoding steps, which plan nothing).
        """

        seen: list[Any] = [None]

        def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            plan = session.plan
            if plan is None or plan is seen[0]:
                return
            seen[0] = plan
            kept = plan.keep.to(torch.float64).mean(dim=1).tolist()  # (B, L) -> (B,)
            self.records.append(PrefillRecord(kind, tuple(int(n) for n in plan.real_lengths), tuple(kept)))

        return session.adapter.decoder.register_forward_hook(hook, with_kwargs=True)

    # -- generation ------------------------------------------------------------------------

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> torch.Tensor:
        """``context`` ``(B, T)`` left-padded ids (mask in ``generation_kwargs``) -> ``(B, T + new)`` ids."""
        if self.recipe is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        with self.recipe.apply(self.model) as session:
            handle = self._recording(session, "generate_until")
            try:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            finally:
                handle.remove()

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        out = super().generate_until(requests, disable_tqdm=disable_tqdm)
        if self.recipe is not None:
            logger.info(self.compression_summary())
        return out

    # -- loglikelihood ---------------------------------------------------------------------

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        if self.recipe is not None:
            raise NotImplementedError(
                "kvpress-lab: loglikelihood_rolling (perplexity tasks such as wikitext) cannot run compressed: each "
                "window is scored teacher-forced from its first token, so there is no prompt to compress and the "
                "result would be the uncompressed one. Run these tasks with recipe=full (or lm-eval's hf model)."
            )
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None) -> list:
        """``[((context, continuation), context_ids, continuation_ids)]`` -> ``[(log p(continuation), is_greedy)]``."""
        if self.recipe is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        results = []
        prefilled: tuple[tuple[int, ...], Any, torch.Tensor] | None = None  # (context ids, cache, last logits)
        with self.recipe.apply(self.model) as session:
            handle = self._recording(session, "loglikelihood")
            try:
                for request_str, context_enc, continuation_enc in requests:
                    if not context_enc or not continuation_enc:
                        raise ValueError(f"loglikelihood needs a non-empty context and continuation, got {request_str!r}.")
                    full = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
                    context = tuple(full[: len(full) - len(continuation_enc)])
                    if prefilled is None or prefilled[0] != context:
                        prefilled = (context, *self._prefill(context))
                    answer = self._score(prefilled[1], prefilled[2], len(context), list(continuation_enc))
                    results.append(answer)
                    if request_str is not None:
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
            finally:
                handle.remove()
        logger.info(self.compression_summary())
        return results

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                              enabled=self.mixed_precision_dtype is not None)

    @torch.no_grad()
    def _prefill(self, context: tuple[int, ...]) -> tuple[Any, torch.Tensor]:
        """Compressed cache of ``context`` and its last position's logits ``(1, 1, V)``."""
        ids = torch.tensor([context], dtype=torch.long, device=self.device)
        with self._autocast():
            output = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        if cache is None:
            raise RuntimeError(f"{type(self.model).__name__} returned no cache; load it with use_cache enabled.")
        return cache, output.logits[:, -1:]

    @torch.no_grad()
    def _score(self, cache: Any, last_logits: torch.Tensor, start: int, continuation: list[int]) -> tuple[float, bool]:
        """Log-probability of ``continuation`` after the compressed context, and whether it is the greedy one."""
        logits = last_logits
        if len(continuation) > 1:
            ids = torch.tensor([continuation[:-1]], dtype=torch.long, device=self.device)
            positions = torch.arange(start, start + ids.shape[1], device=self.device)[None]
            with self._autocast():
                rest = self.model(input_ids=ids, position_ids=positions, cache=copy.deepcopy(cache), use_cache=True).logits
            logits = torch.cat([logits, rest], dim=1)
        logits = F.log_softmax(logits[0], dim=-1, dtype=self.softmax_dtype)  # (n, V)
        target = torch.tensor(continuation, dtype=torch.long, device=logits.device)
        greedy = bool((logits.argmax(dim=-1) == target).all())
        return float(logits.gather(1, target[:, None]).sum()), greedy


def _load_embedded(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The embedded model and tokenizer, honouring lm-eval's ``device`` and ``dtype`` arguments (consumed)."""
    from kvpress_lab.models import load_model

    device = kwargs.pop("device", None)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = kwargs.pop("dtype", "auto")
    return load_model("embedded", dtype=dtype, device=device)
