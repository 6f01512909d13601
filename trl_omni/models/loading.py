"""Loading real unified-token checkpoints (Anole / Chameleon) ready to train and draw."""

from __future__ import annotations

import contextlib
import copy
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
    device: torch.device | str | None = None,
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
        dtype: A `torch.dtype` or its name (`"bfloat16"`, `"float32"`, ...); `"auto"` (or None) keeps the
            checkpoint's dtype.
        device: Where to put the model once loaded: a device (`"cuda"`, `"cuda:1"`, `"cpu"`), `"auto"` (the
            accelerator when there is one, else the CPU) or None (where `from_pretrained` put it). Not together with a
            quantization config or a `device_map`, which place the weights while loading.
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

    if device is not None and (quantization_config is not None or "device_map" in from_pretrained_kwargs):
        raise ValueError(
            "Pass either `device` or a quantization config / `device_map` to load_omni_model: quantized weights and a "
            "device map are placed while loading (use device_map={'': index} for one device)."
        )
    dtype = "auto" if dtype is None else dtype
    if quantization_config is not None:
        from_pretrained_kwargs["quantization_config"] = _keep_image_modules_unquantized(quantization_config)
    with _vq_decoder_keys_expected(ChameleonForConditionalGeneration):
        model = ChameleonForConditionalGeneration.from_pretrained(
            model_name_or_path, dtype=dtype, **from_pretrained_kwargs
        )
    if device is not None:
        model.to(resolve_device(device))
    enable_image_generation(model)
    freeze_vq_model(model)
    processor = None
    if load_processor:
        processor = ChameleonProcessor.from_pretrained(model_name_or_path, **(processor_kwargs or {}))
    return model, processor


def resolve_device(device: torch.device | str | None = "auto") -> torch.device:
    """A `torch.device`; `"auto"` or None is the accelerator when there is one (CUDA, XPU, MPS, ...), else the CPU.

    Example:
        ```python
        >>> resolve_device("auto")  # device(type='cuda', index=0) on a GPU machine
        ```
    """
    if device is None or device == "auto":
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        return accelerator if accelerator is not None else torch.device("cpu")
    return torch.device(device)


# Anole checkpoints carry the VQGAN decoder (`model.vqmodel.decoder.*`), and a full PeSFT checkpoint its perception head
# (`perception_head.weight`); transformers' Chameleon has no module for either. trl-omni reads them itself
# (`load_vq_decoder`; `add_perception_head`, which PeSFT calls), so they are expected, not "unexpected".
_VQ_DECODER_KEYS = r"(model\.vqmodel\.decoder\.)|(^perception_head\.)"


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


def _keep_image_modules_unquantized(quantization_config: Any) -> Any:
    """A copy of `quantization_config` that leaves the VQ model and `lm_head` in full precision (the caller's config
    is not changed)."""
    skip_attr = "llm_int8_skip_modules"  # bitsandbytes' name for "modules to leave in full precision"
    if not hasattr(quantization_config, skip_attr):
        return quantization_config
    skipped = list(getattr(quantization_config, skip_attr) or [])
    missing = [name for name in ("vqmodel", "lm_head") if name not in skipped]
    if not missing:
        return quantization_config
    quantization_config = copy.copy(quantization_config)
    setattr(quantization_config, skip_attr, skipped + missing)
    return quantization_config
