"""Fingerprints: content hashes of everything that decides a run's output (one helper for every resumable run and
cache key in trl-omni: evaluation, bootstrap, pre-tokenization).

Hashes are xxHash3-128 (the `xxhash` package that `datasets` fingerprints its caches with): every byte of every
tensor is read, never a sample, at several GB/s per core. They identify content, they are no security measure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import xxhash


logger = logging.getLogger(__name__)

# Tensors are hashed in slices of this many bytes, so a GPU tensor is never copied to the host in one piece.
_CHUNK_BYTES = 64 << 20


def fingerprint_data(data: Any, length: int = 32) -> str:
    """Hash of a JSON-serialisable value (keys sorted; objects JSON cannot encode by their `str`).

    Args:
        data: The value.
        length: Hex digits kept (at most 32).

    Example:
        ```python
        >>> fingerprint_data({"seed": 1, "max_steps": 4}) == fingerprint_data({"max_steps": 4, "seed": 1})
        True
        ```
    """
    encoded = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(encoded.encode())[:length]


def fingerprint_tensors(named_tensors: Iterable[tuple[str, Any]]) -> str:
    """Hash of named tensors: every name, dtype, shape and byte (on any device; GPU tensors are read in slices).

    Offloaded (`meta`) tensors hold no data: they are hashed by name, dtype and shape only, with a warning.

    Example:
        ```python
        >>> fingerprint_tensors(model.state_dict().items())
        ```
    """
    import torch

    hasher = xxhash.xxh3_128()
    offloaded = []
    with torch.no_grad():
        for name, tensor in named_tensors:
            tensor = tensor.detach()
            hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            if tensor.device.type == "meta":
                offloaded.append(name)
                continue
            raw = tensor.contiguous().reshape(-1).view(torch.uint8)
            for start in range(0, raw.numel(), _CHUNK_BYTES):
                hasher.update(raw[start : start + _CHUNK_BYTES].cpu().numpy().data)
    if offloaded:
        logger.warning(
            "%d offloaded tensors (e.g. %s) are fingerprinted by name, dtype and shape only: their values are not "
            "in memory.",
            len(offloaded),
            offloaded[0],
        )
    return hasher.hexdigest()


def fingerprint_model(model: Any) -> dict[str, Any]:
    """What identifies a model's outputs, as named fields (a resume names the field that differs).

    - `name_or_path`: where it was loaded from (`config._name_or_path`);
    - `class`, `dtype` and `quantization` (the quantization config, if any);
    - `adapters`: the PEFT adapter configs (name -> settings), if any;
    - `generation_config`: the generation settings that differ from transformers' defaults;
    - `weights`: a hash of every tensor of the model (base weights, adapters, a PeSFT perception head, buffers), so
      two adapters on one base model, or a checkpoint retrained into the same directory, never look alike. A
      revision of a Hub checkpoint is covered by the weights it resolves to.

    Args:
        model: A `PreTrainedModel` or a `PeftModel` (wrappers such as DDP are unwrapped).

    Example:
        ```python
        >>> fingerprint_model(model)["weights"]
        '5b7a...'
        ```
    """
    model = getattr(model, "module", model)
    config = getattr(model, "config", None)
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, Mapping):
        quantization = quantization.to_dict() if hasattr(quantization, "to_dict") else repr(quantization)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        # Bookkeeping fields, not settings: they must not make a transformers upgrade look like another model.
        generation = {
            key: value
            for key, value in generation.to_diff_dict().items()
            if key not in ("transformers_version", "_from_model_config")
        }
    adapters = {
        name: _plain(adapter.to_dict() if hasattr(adapter, "to_dict") else vars(adapter))
        for name, adapter in (getattr(model, "peft_config", None) or {}).items()
    }
    return {
        "name_or_path": str(getattr(config, "_name_or_path", "") or ""),
        "class": type(model).__name__,
        "dtype": str(getattr(model, "dtype", "")),
        "quantization": _plain(quantization),
        "adapters": adapters,
        "generation_config": _plain(generation),
        "weights": fingerprint_tensors(model.state_dict().items()),
    }


def fingerprint_processor(processor: Any) -> dict[str, Any]:
    """What identifies a processor's encoding, as named fields: the image processor's settings, the tokenizer (its
    whole definition, special tokens and chat template) and the processor's own settings (`image_seq_length`, ...).

    Args:
        processor: A `ProcessorMixin` (e.g. `ChameleonProcessor`), a tokenizer, an image processor or None.
    """
    if processor is None:
        return {}
    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None and hasattr(processor, "convert_tokens_to_ids"):
        tokenizer = processor
    if image_processor is None and tokenizer is None and hasattr(processor, "to_dict"):
        image_processor = processor
    own = {
        key: value
        for key, value in vars(processor).items()
        if key not in ("image_processor", "tokenizer", "chat_template", "audio_tokenizer")
        and not key.startswith("_")
        and isinstance(value, str | int | float | bool | type(None))
    }
    return {
        "processor": own if processor not in (tokenizer, image_processor) else {},
        "image_processor": _plain(image_processor.to_dict()) if image_processor is not None else None,
        "tokenizer": _tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
    }


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # A fast tokenizer keeps the truncation / padding of its *last call* in its state: it says nothing about
        # how text is encoded, and would make one tokenizer's fingerprint depend on what it was last asked to do.
        definition.pop("truncation", None)
        definition.pop("padding", None)
    else:
        definition = sorted(tokenizer.get_vocab().items())
    # The padding side is left out for the same reason: trl-omni pads explicitly wherever it matters.
    return fingerprint_data(
        {
            "class": type(tokenizer).__name__,
            "definition": definition,
            "special_tokens": getattr(tokenizer, "special_tokens_map", {}),
            "added": sorted(getattr(tokenizer, "get_added_vocab", dict)().items()),
            "chat_template": getattr(tokenizer, "chat_template", None),
        }
    )


def fingerprint_dataset(dataset: Any) -> str:
    """A `datasets.Dataset`'s own fingerprint (a hash of its content and transforms), else a hash of its rows."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    return fingerprint_data([dict(row) if isinstance(row, Mapping) else row for row in dataset])


def _plain(value: Any) -> Any:
    """`value` as plain JSON data (tuples as lists, sets sorted, other objects by `str`)."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)
