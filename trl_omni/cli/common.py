"""Script arguments, dataset loading / conversion and model loading shared by the `trl-omni` scripts."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ScriptArguments


logger = logging.getLogger(__name__)

DATASET_FORMATS = ("auto", "interleaved", "pretokenized", "zebra_cot", "m3cot", "omni_bench")
_LOCAL_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass
class OmniScriptArguments(ScriptArguments):
    """Dataset arguments of the trl-omni scripts ([`~trl.ScriptArguments`] plus format handling).

    Parameters:
        dataset_format (`str`, *optional*, defaults to `"auto"`):
            Layout of the rows: `"interleaved"` (trl-omni schema), `"pretokenized"` (`input_ids` rows), a public
            dataset converted on the fly (`"zebra_cot"`, `"m3cot"`, `"omni_bench"`), or `"auto"` (detected from the
            column names).
        max_train_samples (`int` or `None`, *optional*):
            Keep only the first N training rows (quick runs, debugging).
        on_error (`str`, *optional*, defaults to `"raise"`):
            Bad rows / images: `"raise"` (error naming the row and field) or `"skip"` (dropped, counted, logged).
        pretokenize_batch_size (`int`, *optional*, defaults to `32`):
            Images per VQ-encoder forward when images are encoded into codes before training.
    """

    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Row layout: 'interleaved' (trl-omni schema), 'pretokenized' (input_ids rows), 'zebra_cot', "
            "'m3cot', 'omni_bench' (converted on the fly) or 'auto' (detected from the columns).",
            "choices": list(DATASET_FORMATS),
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (quick runs, debugging)."}
    )
    on_error: str = field(
        default="raise",
        metadata={
            "help": "Bad rows / images: 'raise' (error naming the row and field) or 'skip' (dropped, counted, "
            "logged).",
            "choices": ["raise", "skip"],
        },
    )
    pretokenize_batch_size: int = field(
        default=32, metadata={"help": "Images per VQ-encoder forward when encoding images into codes."}
    )


def load_any_dataset(name_or_path: str, config: str | None = None, streaming: bool = False) -> Any:
    """Loads a dataset from the Hub, a local file (json/jsonl/parquet/csv/arrow), a `save_to_disk` directory or a
    folder of data files.

    Example:
        ```python
        >>> dataset = load_any_dataset("data/train.jsonl")["train"]
        ```
    """
    from datasets import load_dataset, load_from_disk

    path = Path(name_or_path)
    if path.is_dir() and any((path / marker).exists() for marker in ("dataset_dict.json", "state.json")):
        return load_from_disk(str(path))
    if path.is_file():
        builder = _LOCAL_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"Cannot read the dataset file {name_or_path!r}: unknown extension {path.suffix!r}. Use one of "
                f"{sorted(_LOCAL_FILE_BUILDERS)}, a `save_to_disk` directory or a Hub dataset name."
            )
        return load_dataset(builder, data_files=str(path), streaming=streaming)
    return load_dataset(name_or_path, name=config, streaming=streaming)


def select_split(dataset: Any, split: str, what: str = "dataset_train_split") -> Any:
    """The `split` of a `DatasetDict` (a plain `Dataset`, or the only split, is returned as is); a clear error when it
    is missing."""
    if not hasattr(dataset, "keys"):
        return dataset
    if split not in dataset and len(dataset) == 1:
        # A single local file loads as one "train" split: that is the data, whatever the split is called.
        return next(iter(dataset.values()))
    if split not in dataset:
        raise ValueError(f"The dataset has no split {split!r} (splits: {list(dataset.keys())}); set --{what}.")
    return dataset[split]


def detect_format(column_names: list[str]) -> str:
    """Guesses the row layout from the column names (see [`OmniScriptArguments.dataset_format`])."""
    columns = set(column_names)
    if "input_ids" in columns:
        return "pretokenized"
    if {"Question", "Text Reasoning Trace"} <= columns:
        return "zebra_cot"
    if {"question", "rationale", "choices"} <= columns:
        return "m3cot"
    if {"question", "image", "answer"} <= columns:
        return "omni_bench"
    if "prompt" in columns:
        return "interleaved"
    raise ValueError(
        f"Cannot tell the dataset format from its columns {sorted(columns)}. Set --dataset_format to one of "
        f"{list(DATASET_FORMATS[1:])} (see docs/data-formats.md)."
    )


def to_interleaved(
    dataset: Any,
    dataset_format: str,
    model: Any,
    processor: Any,
    image_root: str | os.PathLike | None = None,
    on_error: str = "raise",
    encode_batch_size: int = 32,
) -> Any:
    """Converts `dataset` to the interleaved schema (when it is a known public format) and encodes its images into
    VQ codes once ([`pretokenize_images`]); pre-tokenized rows are returned unchanged."""
    from ..data import convert_m3cot, convert_omni_bench, convert_zebra_cot, pretokenize_images

    if dataset_format == "auto":
        dataset_format = detect_format(list(dataset.column_names))
        logger.info("Detected dataset format %r.", dataset_format)
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format must be one of {list(DATASET_FORMATS)}, got {dataset_format!r}.")
    if dataset_format == "pretokenized":
        return dataset
    converters = {"zebra_cot": convert_zebra_cot, "m3cot": convert_m3cot, "omni_bench": convert_omni_bench}
    if dataset_format in converters:
        dataset = converters[dataset_format](dataset, on_error=on_error)
    columns = [column for column in ("prompt", "completion") if column in dataset.column_names]
    return pretokenize_images(
        dataset,
        model,
        processor,
        image_root=image_root,
        columns=columns,
        on_error=on_error,
        encode_batch_size=encode_batch_size,
    )


def load_model_and_processor(model_args: Any, trust_remote_code: bool = False, **kwargs: Any) -> tuple[Any, Any]:
    """Loads the model named by a [`~trl.ModelConfig`] with [`load_omni_model`]: dtype, attention implementation,
    revision and 4/8-bit quantization (QLoRA) from the config.

    Example:
        ```python
        >>> model, processor = load_model_and_processor(ModelConfig(model_name_or_path="leloy/Anole-7b-v0.1-hf"))
        ```
    """
    import torch
    from trl import get_quantization_config

    from ..models import load_omni_model

    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (a Hub id or a local Chameleon / Anole checkpoint).")
    dtype = model_args.dtype
    if dtype not in (None, "auto"):
        dtype = getattr(torch, dtype)
    quantization_config = get_quantization_config(model_args)
    load_kwargs: dict[str, Any] = {"revision": model_args.model_revision, "trust_remote_code": trust_remote_code}
    if model_args.attn_implementation is not None:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    if quantization_config is not None and torch.cuda.is_available():
        # bitsandbytes weights are placed at load time: put each rank's copy on its own GPU.
        from accelerate import PartialState

        load_kwargs["device_map"] = {"": PartialState().local_process_index}
    load_kwargs.update(kwargs)
    return load_omni_model(
        model_args.model_name_or_path,
        dtype=dtype if dtype is not None else "auto",
        quantization_config=quantization_config,
        **load_kwargs,
    )
