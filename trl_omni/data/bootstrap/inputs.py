"""Input rows: loading the text-only CoT dataset and mapping a row onto the M3CoT converter."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..converters import question_row_to_interleaved
from ..schema import InterleavedDataError
from .config import BootstrapConfig


def _row_to_question(row: Mapping[str, Any], config: BootstrapConfig, index: int) -> dict[str, Any]:
    """Maps an input row onto the M3CoT column names and converts it like M3CoT (free-form questions when
    `choices_column` is None). Errors name the input's own columns."""
    columns = {
        "id": config.id_column,
        "question": config.question_column,
        "choices": config.choices_column,
        "context": config.context_column,
        "answer": config.answer_column,
        "rationale": config.rationale_column,
        "image": config.image_column,
    }
    mapped = {name: row.get(column) for name, column in columns.items() if column}
    if mapped.get("id") is None:
        mapped["id"] = f"row-{index}"
    try:
        return question_row_to_interleaved(mapped, index, multiple_choice=bool(config.choices_column))
    except InterleavedDataError as error:
        head, _, tail = error.field.partition("[")
        field = (columns.get(head) or head) + (f"[{tail}" if tail else "")
        fix = error.fix
        if head == "choices":
            fix += " For free-form questions, set --choices_column None."
        raise InterleavedDataError(error.row, field, error.problem, fix) from None


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
