"""The ``"kvpress-lab"`` transformers pipeline: compress a context once, answer one or many questions.

Importing this module registers the task with transformers (its custom-pipeline registry,
``PIPELINE_REGISTRY.register_pipeline``), so ``transformers.pipeline("kvpress-lab", ...)`` builds a
:class:`KVPressLabPipeline`. ``import kvpress_lab`` does not import it (transformers' pipelines
are slow to import); :func:`register_pipeline` does the same registration explicitly, and may be
called any number of times.

The work is :func:`kvpress_lab.answers.ask`'s: one compressed prefill of the context, one private
copy of the compressed cache per question.

Examples
--------
>>> import kvpress_lab.pipeline                                                     # doctest: +SKIP
>>> from transformers import pipeline                                               # doctest: +SKIP
>>> pipe = pipeline("kvpress-lab", model=model, tokenizer=tokenizer,
...                 recipe=Recipe.preset("snapkv", budget=128))                     # doctest: +SKIP
>>> pipe(context=document, question="Who wrote it?")["answer"]                      # doctest: +SKIP
>>> pipe(context=document, questions=["Who?", "When?"], max_new_tokens=16)["answers"]  # doctest: +SKIP

:func:`load_pipeline` takes what :func:`~kvpress_lab.models.load_model` takes as ``model=``: the
embedded model's name, a local checkpoint or GGUF file, a Hub id (``transformers.pipeline``
itself only takes a model object or what ``from_pretrained`` reads):

>>> pipe = load_pipeline(model="smollm2-135m-instruct", recipe=Recipe.preset("kvzip", budget=32))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from kvpress_lab.answers import Answer, ask

__all__ = ["TASK", "KVPressLabPipeline", "load_pipeline", "register_pipeline"]

#: The task name the pipeline is registered under.
TASK = "kvpress-lab"

_UNSET = object()


class KVPressLabPipeline(Pipeline):
    """Question answering on a compressed context (:func:`kvpress_lab.answers.ask` as a pipeline).

    Build it with ``transformers.pipeline("kvpress-lab", model=..., tokenizer=..., recipe=...)``
    after ``import kvpress_lab.pipeline``. Every parameter below can be given when the pipeline
    is built (a default for every call) or per call.

    Parameters
    ----------
    context : str
        The document, prefilled and compressed once per call (also the first positional
        argument; a list of contexts gives a list of results).
    question : str
        One question: the result is ``{"answer": str, "stats": dict}``.
    questions : sequence of str
        Several questions on the same compressed context: ``{"answers": [str, ...], "stats":
        [dict, ...]}``. Give ``question`` or ``questions``, not both.
    recipe : Recipe, str, Mapping or None
        The compression recipe, a preset name or a dict of Recipe fields (as :func:`kvpress_lab.ask`);
        ``None`` (default) keeps the full cache.
    chat_template : bool or None
        Wrap context and question in the tokenizer's chat template; default: when it has one.
    prefill_chunk_size : int or None
        Prefill the context in chunks of this many tokens, compressing after each (with no
        recipe: the full cache, in chunks).
    **generate_kwargs
        Passed to ``model.generate`` (``max_new_tokens``, ``do_sample``, ...; default 64 greedy tokens).

    A list of contexts gives a list of results; they run one after the other whatever
    ``batch_size`` (each is one compressed prefill and its answers, not a row of a batch), so
    results equal those of one call per context. The pipeline may be called from several threads
    at once (see :doc:`/explanation/guarantees`).

    The ``stats`` of each answer are the other fields of :class:`~kvpress_lab.answers.Answer`:
    ``question``, ``new_tokens``, ``question_tokens``, ``seconds``, ``context_tokens``,
    ``prefill_seconds``.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = False  # generation options go to ask(), which calls generate

    def __call__(self, inputs: Any = None, *args: Any, context: Any = _UNSET, batch_size: Any = None, **kwargs: Any) -> Any:
        if context is not _UNSET:
            if inputs is not None:
                raise TypeError("the context is given twice, positionally and as context=; give one of them.")
            inputs = context
        if inputs is None:
            raise TypeError("the kvpress-lab pipeline needs a context: pipe(context=..., question=...).")
        # each context is a whole compressed prefill plus its answers: contexts run one at a time, whatever batch_size
        return super().__call__(inputs, *args, batch_size=1, **kwargs)

    def _sanitize_parameters(self, question: Any = None, questions: Any = None, recipe: Any = _UNSET,
                             chat_template: Any = _UNSET, prefill_chunk_size: Any = _UNSET, **generate_kwargs: Any):
        if question is not None and questions is not None:
            raise ValueError("give question= (one question) or questions= (several), not both.")
        preprocess: dict[str, Any] = {}
        if question is not None:
            if not isinstance(question, str):
                raise TypeError(f"question= takes one string, got {type(question).__name__}: {question!r:.60}; "
                                "for several questions use questions=[...].")
            preprocess = {"questions": question, "single": True}
        elif questions is not None:
            if isinstance(questions, str):
                raise TypeError("questions= takes a list of strings; for one question use question=.")
            preprocess = {"questions": list(questions), "single": False}
        forward = {key: value for key, value in (("recipe", recipe), ("chat_template", chat_template),
                                                  ("chunk_size", prefill_chunk_size)) if value is not _UNSET}
        forward.update(generate_kwargs)
        return preprocess, forward, {}

    def preprocess(self, context: Any, questions: Any = None, single: bool = True) -> dict[str, Any]:
        if questions is None:
            raise ValueError("the kvpress-lab pipeline needs question= or questions= besides the context.")
        if not isinstance(context, str):
            raise TypeError(f"context must be a string (or a list of strings), got {type(context).__name__}.")
        return {"context": context, "questions": questions, "single": single}

    def _forward(self, inputs: dict[str, Any], recipe: Any = None, chat_template: bool | None = None,
                 chunk_size: int | None = None, **generate_kwargs: Any) -> dict[str, Any]:
        answers = ask(self.model, self.tokenizer, inputs["context"], inputs["questions"], recipe,
                      chat_template=chat_template, chunk_size=chunk_size, **generate_kwargs)
        return {"answers": answers, "single": inputs["single"]}

    def postprocess(self, outputs: dict[str, Any]) -> dict[str, Any]:
        answers: list[Answer] = outputs["answers"]
        stats = [{k: v for k, v in dataclasses.asdict(a).items() if k != "text"} for a in answers]
        if outputs["single"]:
            return {"answer": answers[0].text, "stats": stats[0]}
        return {"answers": [a.text for a in answers], "stats": stats}


def load_pipeline(model: Any = "smollm2-135m-instruct", tokenizer: Any = None, **kwargs: Any) -> KVPressLabPipeline:
    """``transformers.pipeline("kvpress-lab", ...)`` whose ``model=`` also takes any name :func:`~kvpress_lab.models.load_model` takes.

    Parameters
    ----------
    model : str, os.PathLike or transformers.PreTrainedModel, default "smollm2-135m-instruct"
        A name or path (the embedded model, a checkpoint folder, a ``.gguf`` file, a Hub id),
        loaded with :func:`~kvpress_lab.models.load_model` together with its tokenizer; or a model.
    tokenizer : transformers.PreTrainedTokenizerBase, optional
        Default: the one loaded with ``model`` (needed when ``model`` is a model object).
    **kwargs
        Passed to ``transformers.pipeline`` (``recipe=``, ``max_new_tokens=``, ``device=``, ...).
    """
    from transformers import pipeline

    if isinstance(model, (str, os.PathLike)):
        from kvpress_lab.models import load_model

        model, loaded_tokenizer = load_model(model)
        tokenizer = loaded_tokenizer if tokenizer is None else tokenizer
    return pipeline(TASK, model=model, tokenizer=tokenizer, **kwargs)


def register_pipeline() -> None:
    """Register the ``"kvpress-lab"`` task with transformers (done on import; calling it again does nothing)."""
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is not None and current.get("impl") is KVPressLabPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=KVPressLabPipeline, pt_model=AutoModelForCausalLM)


register_pipeline()
