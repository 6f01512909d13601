"""Loading real unified-token checkpoints (Anole / Chameleon) ready to train and draw."""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .generation import enable_image_generation
from .image_vocabulary import _chameleon_backbone


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_IMAGE_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_SUPPORTED_MODEL_TYPES = ("chameleon",)


class CheckpointError(OSError):
    """A model path that cannot be loaded as a Chameleon / Anole checkpoint: a missing directory, config, weights
    or tokenizer, or another model type. The message names the path, what is missing or found, and the fix."""


def _looks_like_local_path(name: str) -> bool:
    # A Hub id is `name` or `owner/name`: never absolute, never relative to `.`, never with two slashes.
    return os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.count("/") > 1


def check_checkpoint(model_name_or_path: str | os.PathLike, load_processor: bool = True) -> None:
    """Checks that a local checkpoint directory holds what [`load_omni_model`] reads: `config.json` of a Chameleon
    model, the weights (single file or every shard of an index) and, with `load_processor`, the tokenizer and the
    image-processor config. Hub ids are left to `from_pretrained`.

    Raises:
        CheckpointError: naming the directory, what is missing (with the files present) and the fix.

    Example:
        ```python
        >>> check_checkpoint("anole-pesft")  # before launching a long job
        ```
    """
    name = os.fspath(model_name_or_path)
    path = Path(name).expanduser()
    if not path.exists():
        if _looks_like_local_path(name):
            raise CheckpointError(
                f"The model path {name!r} does not exist. Fix: give the directory `save_pretrained` / "
                "`trainer.save_model` wrote, or a Hub id such as 'leloy/Anole-7b-v0.1-hf'."
            )
        return  # a Hub id
    if not path.is_dir():
        raise CheckpointError(
            f"The model path {name!r} is a file, not a checkpoint directory. Fix: give the directory that holds "
            "config.json, the weights and the tokenizer."
        )
    files = sorted(entry.name for entry in path.iterdir())
    listing = f"(files there: {files[:12]}{' ...' if len(files) > 12 else ''})"

    def missing(what: str, fix: str) -> CheckpointError:
        return CheckpointError(f"The checkpoint directory {name!r} has no {what} {listing}. Fix: {fix}")

    if "config.json" not in files:
        if "adapter_config.json" in files:
            raise missing(
                "config.json: it is a PEFT adapter directory",
                "load its base model with load_omni_model, then `PeftModel.from_pretrained(model, path)` (`trl-omni "
                "eval` does both), or merge the adapter into the base model and save that.",
            )
        raise missing("config.json", "point to the directory `save_pretrained` / `trainer.save_model` wrote.")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path / 'config.json'} cannot be read as JSON ({error}). Fix: re-save it.") from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"The checkpoint {name!r} is a {model_type!r} model (config.json `model_type`); load_omni_model loads "
            f"Chameleon / Anole checkpoints (model_type in {list(_SUPPORTED_MODEL_TYPES)}). Fix: give an Anole / "
            "Chameleon checkpoint, e.g. 'leloy/Anole-7b-v0.1-hf' or a trl-omni training output."
        )
    indexes = [index for index in _WEIGHT_INDEXES if index in files]
    if indexes:
        try:
            weight_map = json.loads((path / indexes[0]).read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError) as error:
            raise CheckpointError(f"{path / indexes[0]} cannot be read ({error}). Fix: re-save the model.") from error
        shards = sorted(set(weight_map.values()) - set(files))
        if shards:
            raise missing(
                f"weight shard(s) {shards[:5]} listed in {indexes[0]}",
                "copy every shard next to the index (an interrupted download or copy?), or re-save the model.",
            )
    elif not any(weights in files for weights in _WEIGHT_FILES):
        raise missing(
            f"weights ({' / '.join(_WEIGHT_FILES)} or a sharded index)",
            "save the model there with `model.save_pretrained(path)` (or `trainer.save_model(path)`).",
        )
    if load_processor:
        if not any(tokenizer in files for tokenizer in _TOKENIZER_FILES):
            raise missing(
                f"tokenizer ({' / '.join(_TOKENIZER_FILES)})",
                "save the processor next to the model (`processor.save_pretrained(path)`; trainers do when given "
                "`processing_class`), or pass `load_processor=False` and load the processor from the base model.",
            )
        if not any(config_file in files for config_file in _IMAGE_PROCESSOR_FILES):
            raise missing(
                f"image-processor config ({' / '.join(_IMAGE_PROCESSOR_FILES)})",
                "save the ChameleonProcessor next to the model (`processor.save_pretrained(path)`), or pass "
                "`load_processor=False` and load the processor from the base model.",
            )


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

    Raises:
        CheckpointError: a local directory that lacks its config, weights or tokenizer, or holds another model
            type (see [`check_checkpoint`]); a checkpoint that `from_pretrained` fails to read.

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
    check_checkpoint(model_name_or_path, load_processor=load_processor)
    dtype = "auto" if dtype is None else dtype
    if quantization_config is not None:
        from_pretrained_kwargs["quantization_config"] = _keep_image_modules_unquantized(quantization_config)
    local = os.path.isdir(model_name_or_path)
    try:
        with _vq_decoder_keys_expected(ChameleonForConditionalGeneration):
            model = ChameleonForConditionalGeneration.from_pretrained(
                model_name_or_path, dtype=dtype, **from_pretrained_kwargs
            )
        processor = None
        if load_processor:
            processor = ChameleonProcessor.from_pretrained(model_name_or_path, **(processor_kwargs or {}))
    except Exception as error:
        # Only file-level failures of a local checkpoint are ours to explain (missing / truncated / corrupt files:
        # OSError, safetensors' SafetensorError); anything else is the caller's argument error and propagates.
        file_error = isinstance(error, OSError) or type(error).__name__ == "SafetensorError"
        if not local or not file_error or isinstance(error, CheckpointError):
            raise
        raise CheckpointError(
            f"Cannot load the checkpoint {os.fspath(model_name_or_path)!r}: {type(error).__name__}: {error}. Fix: "
            "re-save the model and processor there (a truncated or corrupted file?)."
        ) from error
    if device is not None:
        model.to(resolve_device(device))
    enable_image_generation(model)
    freeze_vq_model(model)
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
