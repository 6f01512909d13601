"""Loading real unified-token checkpoints (Anole / Chameleon) ready to train and draw."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .generation import enable_image_generation
from .image_vocabulary import _chameleon_backbone


logger = logging.getLogger(__name__)

PERCEPTION_HEAD_NAME = "perception_head"
"""Attribute under which PeSFT registers its perception head on the model (and key prefix in checkpoints)."""
ADAPTER_CONFIG_NAME = "adapter_config.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_IMAGE_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_SUPPORTED_MODEL_TYPES = ("chameleon",)


class CheckpointError(OSError):
    """A model path that cannot be loaded as a Chameleon / Anole checkpoint: a missing directory, config, weights
    or tokenizer, or another model type. The message names the path, what is missing or found, and the fix."""


def _check_adapter(path: Path, name: str, files: list[str], listing: str, load_processor: bool) -> None:
    """Checks a PEFT adapter directory (a LoRA / QLoRA output) and, through `base_model_name_or_path`, its base."""
    try:
        config = json.loads((path / ADAPTER_CONFIG_NAME).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"{path / ADAPTER_CONFIG_NAME} cannot be read as JSON ({error}). Fix: re-save it."
        ) from error
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise CheckpointError(
            f"{path / ADAPTER_CONFIG_NAME} has no `base_model_name_or_path`. Fix: set it to the base checkpoint the "
            "adapter was trained on (a Hub id or a local directory)."
        )
    if not any(weights in files for weights in ("adapter_model.safetensors", "adapter_model.bin")):
        raise CheckpointError(
            f"The adapter directory {name!r} has no adapter weights (adapter_model.safetensors / .bin) {listing}. "
            "Fix: point to the directory `trainer.save_model` wrote."
        )
    if read_adapter_config(base) is not None:
        raise CheckpointError(
            f"The base model {base!r} of the adapter {name!r} is itself an adapter directory. Fix: merge that "
            "adapter into its base (`merge_and_unload()` + `save_pretrained`) and point `base_model_name_or_path` at "
            "the result."
        )
    processor_here = any(f in files for f in _TOKENIZER_FILES) and any(f in files for f in _IMAGE_PROCESSOR_FILES)
    check_checkpoint(base, load_processor=load_processor and not processor_here)


def _looks_like_local_path(name: str) -> bool:
    # A Hub id is `name` or `owner/name`: never absolute, never relative to `.`, never with two slashes.
    return os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.count("/") > 1


def _path_name(model_name_or_path: Any) -> str:
    """The checkpoint's path or Hub id as a string; anything but a str or an `os.PathLike` is refused."""
    if not isinstance(model_name_or_path, str | os.PathLike):
        raise TypeError(
            "The model must be given as a checkpoint directory or a Hub id (str or os.PathLike), got "
            f"{type(model_name_or_path).__name__} {model_name_or_path!r}."
        )
    return os.fspath(model_name_or_path)


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
    name = _path_name(model_name_or_path)
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

    if ADAPTER_CONFIG_NAME in files:  # load_omni_model loads it as an adapter on its base
        _check_adapter(path, name, files, listing, load_processor)
        return
    if "config.json" not in files:
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
    is_trainable: bool = False,
    **from_pretrained_kwargs: Any,
) -> tuple[Any, Any]:
    """Loads an Anole / Chameleon checkpoint, or a trl-omni LoRA / QLoRA output, ready to train and to draw.

    The model is loaded with `ChameleonForConditionalGeneration.from_pretrained`, then image generation is enabled
    ([`enable_image_generation`]) and the VQ model is frozen ([`freeze_vq_model`]). Quantization (e.g.
    `BitsAndBytesConfig(load_in_4bit=True)` for QLoRA) keeps the VQ model and the language-model head in full
    precision, since both feed image codes.

    The config's BOS / EOS / pad ids are set to the processor's tokenizer's (converted checkpoints keep stale
    defaults there). Any stage's output loads here, so a later stage continues from it:
    - a full checkpoint holding a trained PeSFT perception head (`perception_head.weight`) gets that head back as
      `model.perception_head`;
    - a PEFT adapter directory (the output of `trl-omni sft|rl --use_peft`, with `adapter_config.json`) is loaded on
      top of its base model (`base_model_name_or_path`, loaded as above) as a `peft.PeftModel`; the perception head
      it saved (`modules_to_save`) is restored too. `is_trainable=True` keeps the adapter trainable, so training
      continues *that* adapter (pass the model to a trainer without `peft_config`).

    Args:
        model_name_or_path: Hub id (e.g. `"leloy/Anole-7b-v0.1-hf"`) or local directory (a checkpoint or a PEFT
            adapter).
        dtype: A `torch.dtype` or its name (`"bfloat16"`, `"float32"`, ...); `"auto"` (or None) keeps the
            checkpoint's dtype.
        device: Where to put the model once loaded: a device (`"cuda"`, `"cuda:1"`, `"cpu"`), `"auto"` (the
            accelerator when there is one, else the CPU) or None (where `from_pretrained` put it). Not together with a
            quantization config or a `device_map`, which place the weights while loading.
        quantization_config: Optional transformers quantization config (bitsandbytes 4-bit / 8-bit, ...).
        load_processor: Also load the `ChameleonProcessor` from the same path.
        processor_kwargs: Extra keyword arguments for the processor's `from_pretrained`.
        is_trainable: For a PEFT adapter directory: load the adapter trainable (to continue training it) instead of
            frozen (inference).
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
    adapter_config = read_adapter_config(_path_name(model_name_or_path))
    if adapter_config is not None:
        return _load_adapter(
            os.fspath(model_name_or_path),
            adapter_config,
            is_trainable=is_trainable,
            dtype=dtype,
            device=device,
            quantization_config=quantization_config,
            load_processor=load_processor,
            processor_kwargs=processor_kwargs,
            **from_pretrained_kwargs,
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
    if _checkpoint_holds_perception_head(model_name_or_path):
        from ..trainers.perception import add_perception_head

        add_perception_head(model, int(model.config.vq_config.embed_dim), load_saved=True)
    if processor is not None:
        _align_special_ids(model, processor.tokenizer)
    return model, processor


def _align_special_ids(model: Any, tokenizer: Any) -> None:
    """Sets the config's and generation config's BOS / EOS / pad ids to the tokenizer's.

    Chameleon / Anole checkpoints converted by transformers keep ChameleonConfig's defaults in the config
    (`bos_token_id=1`, which is `<pad>`, and no pad id) while the tokenizer knows BOS is `<s>` (0) and pad `<pad>` (1).
    Generation and TRL read the config, so without this `generate` warns about the missing pad id on every call and
    every trainer reports that it changed the config.
    """
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is None:
            continue
        for config in (model.config, getattr(model, "generation_config", None)):
            if config is not None and getattr(config, name, None) != value:
                logger.info("Setting %s.%s to the tokenizer's %d.", type(config).__name__, name, value)
                setattr(config, name, value)


def read_adapter_config(path: str | os.PathLike) -> dict | None:
    """The `adapter_config.json` of a local PEFT adapter directory, or None when `path` is not one."""
    config_file = os.path.join(os.fspath(path), ADAPTER_CONFIG_NAME)
    if not os.path.isfile(config_file):
        return None
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle)


def _load_adapter(path: str, adapter_config: dict, *, is_trainable: bool, load_processor: bool, **kwargs: Any):
    from peft import PeftModel

    check_checkpoint(path, load_processor=load_processor)  # the adapter and its base, with errors naming the fix
    base_path = adapter_config["base_model_name_or_path"]
    processor_here = os.path.isfile(os.path.join(path, "processor_config.json"))  # trainers save it with the adapter
    model, processor = load_omni_model(base_path, load_processor=load_processor and not processor_here, **kwargs)
    if load_processor and processor_here:
        from transformers import ChameleonProcessor

        processor = ChameleonProcessor.from_pretrained(path, **(kwargs.get("processor_kwargs") or {}))
        _align_special_ids(model, processor.tokenizer)
    if PERCEPTION_HEAD_NAME in (adapter_config.get("modules_to_save") or []) and not hasattr(
        model, PERCEPTION_HEAD_NAME
    ):
        # The module must exist on the base for PEFT to load the trained copy the adapter saved into it.
        from ..trainers.perception import add_perception_head

        add_perception_head(model, int(model.config.vq_config.embed_dim), load_saved=False)
    model = PeftModel.from_pretrained(model, path, is_trainable=is_trainable)
    logger.info("Loaded the adapter %s on %s (trainable: %s).", path, base_path, is_trainable)
    return model, processor


def _checkpoint_holds_perception_head(path: str | os.PathLike) -> bool:
    """Whether a local checkpoint's safetensors hold a PeSFT perception head (a full fine-tune saved by PeSFT)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    index_file = os.path.join(path, "model.safetensors.index.json")
    prefix = PERCEPTION_HEAD_NAME + "."
    if os.path.isfile(index_file):
        with open(index_file, encoding="utf-8") as handle:
            return any(key.startswith(prefix) for key in json.load(handle).get("weight_map", {}))
    from safetensors import safe_open

    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(path, name), framework="pt") as handle:
                if any(key.startswith(prefix) for key in handle.keys()):  # noqa: SIM118
                    return True
    return False


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
_VQ_DECODER_KEYS = rf"(model\.vqmodel\.decoder\.)|(^{PERCEPTION_HEAD_NAME}\.)"


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
