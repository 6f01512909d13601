"""Input rows: loading the text-only CoT dataset and mapping a row onto the M3CoT converter."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..converters import m3cot_row_to_interleaved
from .config import BootstrapConfig


def _row_to_question(row: Mapping[str, Any], config: BootstrapConfig, index: int) -> dict[str, Any]:
    """Maps an input row onto the M3CoT column names and converts it with the M3CoT converter."""

    def get(column: str | None) -> Any:
        return row.get(column) if column else None

    mapped = {
        "id": get(config.id_column),
        "question": get(config.question_column),
        "choices": get(config.choices_column),
        "context": get(config.context_column),
        "answer": get(config.answer_column),
        "rationale": get(config.rationale_column),
        "image": get(config.image_column),
    }
    if mapped["id"] is None:
        mapped["id"] = f"row-{index}"
    if mapped["answer"] is not None and not isinstance(mapped["answer"], str):
        mapped["answer"] = str(mapped["answer"])
    return m3cot_row_to_interleaved(mapped, index)


def load_input_dataset(config: BootstrapConfig) -> Any:
    """Loads the input dataset named by `config` (local file / directory / `datasets` source)."""
    from datasets import load_dataset

    name = config.dataset_name
    if name is None and not config.data_files:
        raise ValueError("No input: set `dataset_name` (a file, a directory or a datasets source) or `data_files`.")
    if name is not None and os.path.isfile(name):
        extension = os.path.splitext(name)[1].lower().lstrip(".")
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(extension)
        if builder is None:
            raise ValueError(f"dataset_name={name!r}: unsupported file type (json, jsonl, parquet or csv).")
        dataset = load_dataset(builder, data_files=name, split=config.dataset_split)
    else:
        kwargs = {"data_files": config.data_files} if config.data_files else {}
        dataset = load_dataset(name, config.dataset_config, split=config.dataset_split, **kwargs)
    return dataset
