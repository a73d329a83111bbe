"""lm-evaluation-harness model type ``kvpress-lab``: any lm-eval task, run on a compressed KV cache.

Needs the ``eval`` extra (``pip install "kvpress-lab[eval]"``: lm-eval 0.4.13 or a later 0.4). Importing this
module registers the model type with lm-eval; lm-eval has no plugin entry points for models,
so its own ``lm_eval`` command does not know the name. Run lm-eval through this module instead,
which registers the type and then hands every argument to lm-eval's command line::

    python -m kvpress_lab.integrations.lm_eval --model kvpress-lab \\
        --model_args pretrained=Qwen/Qwen3-0.6B,recipe=pyramidkv,budget=128 --tasks longbench

or from Python: ``import kvpress_lab.integrations.lm_eval`` and then
``lm_eval.simple_evaluate(model="kvpress-lab", model_args=...)``, or pass a
:class:`KVPressLabLM` instance as ``model``. See :doc:`/howto/lm-eval`.

What is compressed, per request type:

* ``generate_until``: lm-eval's batched, left-padded ``model.generate`` call runs inside
  ``with recipe.apply(model)``: the prompt's prefill is compressed, decoding continues on the
  compressed cache (exactly kvpress_lab's ``generate``).
* ``loglikelihood`` (multiple choice, ...): two passes per request. The context is prefilled
  under the recipe (compressed; its last position's logits, computed before eviction like the
  first generated token's, score the first continuation token); the other continuation tokens
  are then fed in one forward on the compressed cache, and score the rest. Requests sharing a
  context (the choices of one question) share one compressed prefill. Requests run one at a time.
* ``loglikelihood_rolling`` (perplexity tasks): refused under a recipe. Its windows have no
  context to compress (each window is scored teacher-forced from its first token), so the run
  would be uncompressed while labelled compressed. Run those tasks with ``recipe=full``.

With ``recipe=full`` (or no recipe) the model is lm-eval's ``hf`` model unchanged.
"""

from __future__ import annotations

try:
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        'kvpress_lab.integrations.lm_eval needs lm-evaluation-harness: pip install "kvpress-lab[eval]" '
        f"(or pip install lm-eval). ({exc})"
    ) from exc

from kvpress_lab.integrations.lm_eval.model import EMBEDDED_NAMES, KVPressLabLM, PrefillRecord
from kvpress_lab.integrations.lm_eval.recipe_args import NO_COMPRESSION, build_recipe

__all__ = ["EMBEDDED_NAMES", "MODEL_NAMES", "NO_COMPRESSION", "KVPressLabLM", "PrefillRecord", "build_recipe", "main"]

#: The names the model type is registered under in lm-eval.
MODEL_NAMES = ("kvpress-lab", "kvpress_lab")

register_model(*MODEL_NAMES)(KVPressLabLM)  # this package is imported once per process: registered once


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line (``argv``, default ``sys.argv[1:]``) with the ``kvpress-lab`` model type registered.

    Nothing is downloaded for nltk meanwhile: lm-eval's RULER code asks for nltk's ``punkt_tab``
    when it is imported, which only the essay haystack uses (a task that downloads its
    data anyway); the refusal is logged (:func:`kvpress_lab.integrations.lm_eval.offline.no_downloads`).
    """
    import sys

    from lm_eval.__main__ import cli_evaluate

    from kvpress_lab.integrations.lm_eval.offline import no_downloads

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    with no_downloads():
        cli_evaluate()
