"""Loading datasets from the Hub or local files and turning them into trl-omni's interleaved schema."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

DATASET_FORMATS = ("auto", "interleaved", "pretokenized", "zebra_cot", "m3cot", "omni_bench")
_LOCAL_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


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
    from . import convert_m3cot, convert_omni_bench, convert_zebra_cot, pretokenize_images

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
