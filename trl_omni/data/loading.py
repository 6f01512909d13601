"""Loading datasets from the Hub or local files and turning them into trl-omni's interleaved schema."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .report import SkipReport
from .schema import DatasetFormatError, InterleavedDataError, row_label


logger = logging.getLogger(__name__)

DATASET_FORMATS = ("auto", "interleaved", "pretokenized", "zebra_cot", "m3cot", "omni_bench")
# Columns a dataset must have to be read as each format (other columns are optional or kept as they are).
FORMAT_COLUMNS = {
    "interleaved": ("prompt",),
    "pretokenized": ("input_ids",),
    "zebra_cot": ("Question", "Text Reasoning Trace", "Final Answer"),
    "m3cot": ("question", "choices", "answer", "rationale"),
    "omni_bench": ("question", "image"),
}
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
        builder = _local_file_builder(path)
        try:
            return load_dataset(builder, data_files=str(path), streaming=streaming)
        except Exception as error:  # noqa: BLE001 - any parser failure of `datasets` is re-raised naming the file
            raise DatasetFormatError(
                f"Cannot read the dataset file {name_or_path!r} as {builder} (chosen from its extension "
                f"{path.suffix!r}): {type(error).__name__}: {_first_line(error)}. Fix: check that the file really "
                f"is {builder} (one JSON object per line for .jsonl) and not another format renamed, or convert it."
            ) from error
    if _looks_like_local_path(name_or_path):
        raise DatasetFormatError(
            f"The dataset path {name_or_path!r} does not exist (nor is it a `save_to_disk` directory). Fix: give an "
            "existing json/jsonl/parquet/csv/arrow file, a `save_to_disk` directory or a Hub dataset name."
        )
    return load_dataset(name_or_path, name=config, streaming=streaming)


def _local_file_builder(path: Path) -> str:
    builder = _LOCAL_FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DatasetFormatError(
            f"Cannot read the dataset file {str(path)!r}: unknown extension {path.suffix!r}. Use one of "
            f"{sorted(_LOCAL_FILE_BUILDERS)}, a `save_to_disk` directory or a Hub dataset name."
        )
    return builder


def _looks_like_local_path(name: str) -> bool:
    """A name that can only be a local path: a Hub id is `name` or `owner/name`, never absolute, relative to `.`,
    with more than one `/` or with a data-file extension."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~"))
        or name.count("/") > 1
        or Path(name).suffix.lower() in _LOCAL_FILE_BUILDERS
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def check_dataset_source(
    name_or_path: str | None,
    dataset_format: str = "auto",
    config: str | None = None,
    split: str | None = None,
    split_argument: str = "dataset_train_split",
) -> str | None:
    """Checks, without loading it, that a local dataset (file or `save_to_disk` directory) can be read as
    `dataset_format`: it exists, its extension is known, it parses, it has rows, the split exists and the columns fit
    the format. Hub datasets are not looked up (that needs the network) and return None.

    Returns:
        The format the rows will be read as (`dataset_format`, or the detected one for `"auto"`), or None.

    Raises:
        DatasetFormatError: naming the file, what was found (columns present, splits) and the fix.

    Example:
        ```python
        >>> check_dataset_source("data/train.jsonl", "zebra_cot")  # before launching a long job
        'zebra_cot'
        ```
    """
    if not name_or_path:
        raise DatasetFormatError(
            "No dataset given. Fix: set --dataset_name to a Hub dataset, a local json/jsonl/parquet/csv/arrow file or "
            "a `save_to_disk` directory."
        )
    if dataset_format not in DATASET_FORMATS:
        raise DatasetFormatError(f"dataset_format must be one of {list(DATASET_FORMATS)}, got {dataset_format!r}.")
    path = Path(name_or_path)
    if path.is_dir() and any((path / marker).exists() for marker in ("dataset_dict.json", "state.json")):
        dataset = load_any_dataset(name_or_path)  # memory-mapped: cheap
        rows = select_split(dataset, split, split_argument) if split is not None else dataset
        if hasattr(rows, "values"):
            rows = next(iter(rows.values()))
        check_not_empty(rows, f"the dataset {name_or_path!r}")
        columns = list(rows.column_names)
    elif path.is_file():
        streamed = load_any_dataset(name_or_path, config, streaming=True)
        rows = next(iter(streamed.values())) if hasattr(streamed, "values") else streamed
        try:
            first = next(iter(rows), None)
        except Exception as error:  # noqa: BLE001 - a parser failure while streaming the first record
            raise DatasetFormatError(
                f"Cannot read the dataset file {name_or_path!r} as {_local_file_builder(path)}: "
                f"{type(error).__name__}: {_first_line(error)}. Fix: check that the file's format matches its "
                "extension."
            ) from error
        if first is None:
            raise DatasetFormatError(f"The dataset file {name_or_path!r} holds no rows. Fix: give a file with data.")
        columns = list(first)
    else:
        if _looks_like_local_path(name_or_path):
            load_any_dataset(name_or_path)  # raises the "does not exist" error
        return None
    if dataset_format == "auto":
        dataset_format = detect_format(columns)
    check_format_columns(columns, dataset_format, f"the dataset {name_or_path!r}")
    return dataset_format


def check_format_columns(column_names: Iterable[str], dataset_format: str, what: str = "the dataset") -> None:
    """Raises a [`DatasetFormatError`] when `column_names` lack a column that `dataset_format` needs, naming the
    missing columns, the columns present, the closest names and the format the columns look like."""
    columns = list(column_names)
    required = FORMAT_COLUMNS.get(dataset_format, ())
    missing = [column for column in required if column not in columns]
    if not missing:
        return
    hints = []
    for column in missing:
        lowered = {name.lower(): name for name in columns}
        close = [lowered[column.lower()]] if column.lower() in lowered else difflib.get_close_matches(column, columns)
        if close:
            hints.append(f"{close[0]!r} -> {column!r}")
    try:
        guess = detect_format(columns)
    except DatasetFormatError:
        guess = None
    fixes = []
    if guess is not None and guess != dataset_format:
        fixes.append(f"these columns look like the {guess!r} format: set dataset_format={guess!r} (or 'auto')")
    if hints:
        fixes.append(f"rename the column(s) ({', '.join(hints)}) with `dataset.rename_column(old, new)`")
    if not fixes:
        fixes.append(f"give {what} the columns of the {dataset_format!r} format (see docs/data-formats.md)")
    raise DatasetFormatError(
        f"{what[0].upper()}{what[1:]}, read as {dataset_format!r}, lacks the column(s) {missing}; its columns are "
        f"{columns}. Fix: {'; or '.join(fixes)}."
    )


def rows_to_dataset(
    rows: list,
    what: str = "the dataset",
    row_check: Callable[[Any, int], Any] | None = None,
    on_error: str = "raise",
) -> tuple[Any, list[tuple[int, str]]]:
    """A `datasets.Dataset` from a list of row dicts; Arrow's type errors are turned into errors naming the row.

    Arrow gives a column one type, so a column whose type changes from row to row (an answer that is a float in one
    row, `choices` given as a string in another) cannot be stored. Then `row_check(row, index)` (a converter's row
    function) runs on every row so that its own error names the bad row (dropped under `on_error="skip"`); what it
    does not catch is named by the first row whose value type differs from the column's first one.

    Returns:
        `(dataset, [(index, message) of the rows dropped under on_error="skip"])`.
    """
    from datasets import Dataset

    try:
        return Dataset.from_list(rows), []
    except Exception as arrow_error:  # noqa: BLE001 - pyarrow / datasets type errors are located below
        errors: list[tuple[int, str]] = []
        if row_check is not None:
            for index, row in enumerate(rows):
                try:
                    row_check(row, index)
                except InterleavedDataError as error:
                    if on_error == "raise":
                        raise error from arrow_error
                    errors.append((index, str(error)))
        bad = {index for index, _ in errors}
        kept = [(index, row) for index, row in enumerate(rows) if index not in bad]
        try:
            return Dataset.from_list([row for _, row in kept]), errors
        except Exception:  # noqa: BLE001
            pass
        culprit = _first_mixed_type(kept)
        if culprit is None:
            raise DatasetFormatError(
                f"{what}: the rows cannot be stored as one table ({type(arrow_error).__name__}: {arrow_error}). Fix: "
                "give every row the same keys and the same type in each column."
            ) from arrow_error
        index, column, found, expected, first = culprit
        raise InterleavedDataError(
            row_label(index, rows[index].get("id")),
            column,
            f"holds a {found} where row {first} holds a {expected}; a column has one type in every row.",
            "give this column the same type in every row (None for a missing value).",
        ) from arrow_error


def _first_mixed_type(rows: list[tuple[int, Any]]) -> tuple[int, str, str, str, int] | None:
    """`(row, column, its type, the column's first type, the row holding that)` of the first type change among
    `(index, row)` pairs."""
    first: dict[str, tuple[str, int]] = {}
    for index, row in rows:
        if not isinstance(row, Mapping):
            continue
        for column, value in row.items():
            if value is None:
                continue
            kind = type(value).__name__
            seen = first.setdefault(column, (kind, index))
            if seen[0] != kind:
                return index, column, kind, seen[0], seen[1]
    return None


def check_not_empty(dataset: Any, what: str = "the dataset") -> None:
    """Raises a [`DatasetFormatError`] when a map-style dataset has no rows (streamed datasets are not checked)."""
    try:
        size = len(dataset)
    except TypeError:
        return
    if size == 0:
        columns = list(getattr(dataset, "column_names", None) or [])
        raise DatasetFormatError(
            f"{what[0].upper()}{what[1:]} has no rows (columns: {columns}). Fix: check the file / split / filters "
            "that produced it (`max_train_samples`, `on_error='skip'` dropping every row, ...)."
        )


def select_split(dataset: Any, split: str, what: str = "dataset_train_split") -> Any:
    """The `split` of a `DatasetDict` (a plain `Dataset`, or the only split, is returned as is); a clear error when it
    is missing."""
    if not hasattr(dataset, "keys"):
        return dataset
    if split not in dataset and len(dataset) == 1:
        # A single local file loads as one "train" split: that is the data, whatever the split is called.
        return next(iter(dataset.values()))
    if split not in dataset:
        raise DatasetFormatError(
            f"The dataset has no split {split!r} (splits: {list(dataset.keys())}). Fix: set --{what} to one of them."
        )
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
    if {"question", "image"} <= columns:
        return "omni_bench"
    if "prompt" in columns:
        return "interleaved"
    raise DatasetFormatError(
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
    skip_report: SkipReport | None = None,
) -> Any:
    """Converts `dataset` (a `datasets.Dataset` or a list of rows) to the interleaved schema (when it is a known public
    format) and encodes its images into VQ codes once ([`pretokenize_images`]); pre-tokenized rows are returned
    unchanged (the trainers check them).

    The columns are checked against `dataset_format` first (a [`DatasetFormatError`] names the missing and the
    present columns, whatever `on_error` says); rows skipped under `on_error="skip"` are added to `skip_report`.
    """
    from . import convert_m3cot, convert_omni_bench, convert_zebra_cot, pretokenize_images

    if dataset_format not in DATASET_FORMATS:
        raise DatasetFormatError(f"dataset_format must be one of {list(DATASET_FORMATS)}, got {dataset_format!r}.")
    check_not_empty(dataset)
    if isinstance(dataset, list):
        column_names = list(dict.fromkeys(key for row in dataset if isinstance(row, Mapping) for key in row))
    else:
        column_names = list(dataset.column_names)
    if dataset_format == "auto":
        dataset_format = detect_format(column_names)
        logger.info("Detected dataset format %r.", dataset_format)
    check_format_columns(column_names, dataset_format)
    if isinstance(dataset, list) and dataset_format not in ("zebra_cot", "m3cot", "omni_bench"):
        dataset, _ = rows_to_dataset(dataset)  # the converters take lists themselves
    if dataset_format == "pretokenized":
        return dataset
    converters = {"zebra_cot": convert_zebra_cot, "m3cot": convert_m3cot, "omni_bench": convert_omni_bench}
    if dataset_format in converters:
        dataset = converters[dataset_format](dataset, on_error=on_error, skip_report=skip_report)
    columns = [column for column in ("prompt", "completion") if column in dataset.column_names]
    return pretokenize_images(
        dataset,
        model,
        processor,
        image_root=image_root,
        columns=columns,
        on_error=on_error,
        encode_batch_size=encode_batch_size,
        skip_report=skip_report,
    )
