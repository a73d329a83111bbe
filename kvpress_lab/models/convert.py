"""Converting a GGUF file to a float transformers checkpoint, verified against the GGUF model."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["convert_gguf_to_checkpoint"]

_VERIFY_PROMPT = "The capital of France is"
_VERIFY_ATOL = 1e-4


def convert_gguf_to_checkpoint(gguf_path: pathlib.Path, output_dir: pathlib.Path) -> None:
    """Load ``gguf_path`` with transformers, dequantized, and save it to ``output_dir``.

    The checkpoint holds float32 safetensors and a ``tokenizer.json``, so it loads in well
    under a second, where loading the GGUF file itself (every tensor dequantized, the
    tokenizer parsed in Python) takes tens of seconds.

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
