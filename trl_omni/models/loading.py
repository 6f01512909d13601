"""Loading real unified-token checkpoints (Anole / Chameleon) ready to train and draw."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from .generation import enable_image_generation
from .image_vocabulary import _chameleon_backbone


def freeze_vq_model(model: Any) -> Any:
    """Puts the VQ tokenizer of a Chameleon model in eval mode with `requires_grad=False` on all its parameters.

    transformers sets `vqmodel.eval()` but leaves its parameters trainable, so a full fine-tune would otherwise
    hand the frozen image tokenizer to the optimizer.
    """
    vqmodel = _chameleon_backbone(model).vqmodel
    vqmodel.eval()
    for parameter in vqmodel.parameters():
        parameter.requires_grad_(False)
    return model


def load_omni_model(
    model_name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = "auto",
    quantization_config: Any | None = None,
    load_processor: bool = True,
    processor_kwargs: dict | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[Any, Any]:
    """Loads an Anole / Chameleon checkpoint ready to train and to draw.

    The model is loaded with `ChameleonForConditionalGeneration.from_pretrained`, then image generation is enabled
    ([`enable_image_generation`]) and the VQ model is frozen ([`freeze_vq_model`]). Quantization (e.g.
    `BitsAndBytesConfig(load_in_4bit=True)` for QLoRA) keeps the VQ model and the language-model head in full
    precision, since both feed image codes.

    Args:
        model_name_or_path: Hub id (e.g. `"leloy/Anole-7b-v0.1-hf"`) or local directory.
        dtype: Passed to `from_pretrained` (`"auto"` keeps the checkpoint's dtype).
        quantization_config: Optional transformers quantization config (bitsandbytes 4-bit / 8-bit, ...).
        load_processor: Also load the `ChameleonProcessor` from the same path.
        processor_kwargs: Extra keyword arguments for the processor's `from_pretrained`.
        **from_pretrained_kwargs: Forwarded to the model's `from_pretrained` (`device_map`, `attn_implementation`,
            `revision`, `trust_remote_code`, ...).

    Returns:
        `(model, processor)`; `processor` is None when `load_processor=False`.

    Example:
        ```python
        >>> import torch
        >>> from transformers import BitsAndBytesConfig
        >>> from trl_omni import load_omni_model
        >>> model, processor = load_omni_model(
        ...     "leloy/Anole-7b-v0.1-hf",
        ...     dtype=torch.bfloat16,
        ...     quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        ...     device_map={"": 0},
        ... )
        ```
    """
    from transformers import ChameleonForConditionalGeneration, ChameleonProcessor

    if quantization_config is not None:
        _keep_image_modules_unquantized(quantization_config)
        from_pretrained_kwargs["quantization_config"] = quantization_config
    with _vq_decoder_keys_expected(ChameleonForConditionalGeneration):
        model = ChameleonForConditionalGeneration.from_pretrained(
            model_name_or_path, dtype=dtype, **from_pretrained_kwargs
        )
    enable_image_generation(model)
    freeze_vq_model(model)
    processor = None
    if load_processor:
        processor = ChameleonProcessor.from_pretrained(model_name_or_path, **(processor_kwargs or {}))
    return model, processor


# Anole checkpoints carry the VQGAN decoder (`model.vqmodel.decoder.*`), which transformers' Chameleon has no module for;
# trl-omni reads those weights separately (`load_vq_decoder`), so they are expected, not "unexpected".
_VQ_DECODER_KEYS = r"model\.vqmodel\.decoder\."


@contextlib.contextmanager
def _vq_decoder_keys_expected(model_class: type) -> Iterator[None]:
    """While loading, lists the decoder keys in the class's documented `_keys_to_ignore_on_load_unexpected`, so
    transformers does not print a load report of ~150 "UNEXPECTED" decoder weights for every Anole checkpoint."""
    attribute = "_keys_to_ignore_on_load_unexpected"
    had_own = attribute in model_class.__dict__
    own = model_class.__dict__.get(attribute)
    setattr(model_class, attribute, [*(getattr(model_class, attribute, None) or []), _VQ_DECODER_KEYS])
    try:
        yield
    finally:
        if had_own:
            setattr(model_class, attribute, own)
        else:
            delattr(model_class, attribute)


def _keep_image_modules_unquantized(quantization_config: Any) -> None:
    skip_attr = "llm_int8_skip_modules"  # bitsandbytes' name for "modules to leave in full precision"
    if not hasattr(quantization_config, skip_attr):
        return
    skipped = list(getattr(quantization_config, skip_attr) or [])
    for name in ("vqmodel", "lm_head"):
        if name not in skipped:
            skipped.append(name)
    setattr(quantization_config, skip_attr, skipped)
