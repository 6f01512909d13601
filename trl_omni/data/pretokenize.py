"""`pretokenize_images`: encode every image of an interleaved dataset into VQ codes once, cached by `datasets`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ..models.encoding import ImageEncoder
from .images import load_image
from .loading import check_not_empty
from .report import SkipReport
from .schema import (
    IMAGE_SOURCE_KEYS,
    DatasetFormatError,
    InterleavedDataError,
    check_answer,
    check_codes,
    check_column_names,
    code_list,
    normalize_parts,
    part_list_feature,
    row_label,
)


logger = logging.getLogger(__name__)

_ERROR_COLUMN = "__trl_omni_pretokenize_error__"
_VERSION = "trl_omni.pretokenize_images.v1"  # bump when the output of the map function changes


def pretokenize_images(
    dataset: Any,
    model: Any,
    processor: Any,
    *,
    image_root: str | os.PathLike | None = None,
    columns: Sequence[str] = ("prompt", "completion"),
    batch_size: int = 64,
    encode_batch_size: int = 32,
    on_error: str = "raise",
    keep_raw_images: bool = False,
    num_proc: int | None = None,
    load_from_cache_file: bool | None = None,
    image_encoder: ImageEncoder | None = None,
    desc: str = "Pre-tokenizing images",
    answer_column: str | None = "answer",
    id_column: str = "id",
    skip_report: SkipReport | None = None,
):
    """Encodes every image part of `dataset` into VQ codes once, so training never re-encodes an image.

    Runs `dataset.map(batched=True)`: each map batch decodes its images (PIL / bytes / base64 / files confined to
    `image_root`; any mode or size, converted to RGB and resized by the model's image processor) and encodes them in
    batches of `encode_batch_size` through the model's VQ encoder ([`ImageEncoder`]). The result is fingerprinted from
    the input dataset's fingerprint, the VQ weights, the image-processor settings and these arguments, so a dataset
    stored on disk is encoded once and then read from the `datasets` cache (progress is shown by `datasets`).
    Existing `codes` are checked (integers, exactly `H*W` of them, in range) and kept; every part is checked
    ([`normalize_parts`]) and so is the answer (a string or None).

    Args:
        dataset: A `datasets.Dataset` in the interleaved schema (see `docs/data-formats.md`).
        model: The Chameleon / Anole model whose VQ encoder defines the codes.
        processor: Its `ChameleonProcessor`.
        image_root: Directory that confines image `path` reads (`..` / absolute paths outside it are refused).
        columns: Columns holding parts.
        batch_size: Rows per `datasets.map` batch.
        encode_batch_size: Images per VQ forward.
        on_error: `"raise"` (default): a bad row (image, part, codes, answer) raises an error naming the row, the
            field and the fix. `"skip"`: such rows are dropped, counted and logged (a dataset whose every row is
            bad still raises).
        keep_raw_images: Keep the raw image sources next to the codes (default: cleared, to keep the dataset small).
        num_proc: Processes for `datasets.map` (each holds a copy of the model; keep None on one device).
        load_from_cache_file: Passed to `datasets.map`.
        image_encoder: A ready [`ImageEncoder`] (built from `model` / `processor` when omitted).
        desc: Progress-bar label.
        answer_column: Column holding the answer, checked to be a string or None (None: not checked).
        id_column: Column naming a row in errors, next to its index.
        skip_report: A [`SkipReport`] that records the skipped rows (for the end-of-run summary).

    Returns:
        The dataset with `codes` set on every image part.

    Example:
        ```python
        >>> from trl_omni.data import convert_zebra_cot, pretokenize_images
        >>> train = pretokenize_images(convert_zebra_cot(raw), model, processor)
        ```
    """
    from datasets import Value
    from datasets.fingerprint import Hasher

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise DatasetFormatError(
            f"pretokenize_images: the dataset lacks the column(s) {missing}; its columns are "
            f"{dataset.column_names}. Fix: pass `columns=` naming the columns that hold parts, or convert the "
            "dataset to the interleaved schema first (see docs/data-formats.md)."
        )
    check_not_empty(dataset, "the dataset given to pretokenize_images")
    check_column_names(dataset.column_names)
    encoder = image_encoder or ImageEncoder(model, processor, batch_size=encode_batch_size)
    vocab = encoder.vocab
    root = None if image_root is None else os.fspath(image_root)

    _check_codes_storage(dataset, columns, id_column)
    answer_feature = dataset.features.get(answer_column) if answer_column else None
    # An Arrow string column holds only strings and None: only other column types need a check per row.
    check_answers = answer_feature is not None and answer_feature != Value("string")

    def encode_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows = len(indices)
        errors: list[str | None] = [None] * rows
        out = {column: [None] * rows for column in columns}
        pending: list[tuple[int, str, int, Any, str]] = []  # (row, column, part, image, field)
        ids = batch.get(id_column)
        for i, index in enumerate(indices):
            row_pending = []
            name = row_label(index, ids[i]) if ids is not None else index
            try:
                if check_answers:
                    check_answer(batch[answer_column][i], name, answer_column)
                for column in columns:
                    parts = normalize_parts(batch[column][i], name, column)
                    for j, part in enumerate(parts):
                        if part["type"] != "image":
                            continue
                        field = f"{column}[{j}]"
                        if part["codes"] is not None:
                            part["codes"] = check_codes(part["codes"], name, field, vocab)
                        else:
                            row_pending.append((i, column, j, load_image(part, root, name, field), field))
                    out[column][i] = parts
            except InterleavedDataError as error:
                if on_error == "raise":
                    raise
                errors[i] = str(error)  # the row's parts are emptied below
                continue
            pending += row_pending

        names = [row_label(index, ids[i]) if ids is not None else index for i, index in enumerate(indices)]
        for (i, column, j, _, _), codes in zip(pending, _encode_or_locate(encoder, pending, names, on_error, errors)):
            if codes is not None and errors[i] is None:
                out[column][i][j]["codes"] = codes.tolist()
        for i in range(rows):
            if errors[i] is not None:
                for column in columns:
                    out[column][i] = []
            elif not keep_raw_images:
                for column in columns:
                    for part in out[column][i]:
                        if part["type"] == "image":
                            for key in IMAGE_SOURCE_KEYS[1:]:
                                part[key] = None
        out[_ERROR_COLUMN] = errors
        return out

    features = dataset.features.copy()
    for column in columns:
        features[column] = part_list_feature()
    features[_ERROR_COLUMN] = Value("string")
    fingerprint = Hasher.hash(
        [
            dataset._fingerprint,
            encoder.fingerprint(),
            root,
            list(columns),
            on_error,
            keep_raw_images,
            answer_column,
            id_column,
            _VERSION,
        ]
    )
    before = encoder.num_images_encoded
    encoded = dataset.map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        features=features,
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        new_fingerprint=fingerprint,
        desc=desc,
    )
    if encoder.num_images_encoded > before:
        logger.info("Encoded %d images into VQ codes.", encoder.num_images_encoded - before)
    errors = [(i, error) for i, error in enumerate(encoded[_ERROR_COLUMN]) if error is not None]
    if errors:
        if len(errors) == len(encoded):
            raise DatasetFormatError(
                f"pretokenize_images: every one of the {len(encoded)} rows is bad and was skipped (on_error='skip'). "
                f"First: {errors[0][1]}"
            )
        (skip_report if skip_report is not None else SkipReport()).add(
            "pretokenize_images",
            len(errors),
            len(encoded),
            "on_error='skip'",
            [e for _, e in errors],
            [i for i, _ in errors],
        )
        encoded = encoded.filter(lambda error: error is None, input_columns=_ERROR_COLUMN)
    return encoded.remove_columns(_ERROR_COLUMN)


def check_interleaved_storage(
    dataset: Any,
    columns: Sequence[str] = ("prompt", "completion"),
    answer_column: str | None = "answer",
    id_column: str = "id",
) -> None:
    """Checks, from the dataset's column types (rows are read only when a type is wrong), that an interleaved
    dataset stores its codes as integers and its answers as strings; raises naming the first row that shows it.

    Used where a whole dataset enters (`pretokenize_images`, `PeSFTTrainer`), so a type problem fails before
    training instead of at the step that meets the row.
    """
    from datasets import Value

    present = [column for column in columns if column in dataset.column_names]
    _check_codes_storage(dataset, present, id_column)
    feature = dataset.features.get(answer_column) if answer_column else None
    if feature is None or feature == Value("string"):
        return
    ids = dataset[id_column] if id_column in dataset.column_names else None
    for index, answer in enumerate(dataset[answer_column]):
        check_answer(answer, row_label(index, ids[index] if ids else None), answer_column)


def _check_codes_storage(dataset: Any, columns: Sequence[str], id_column: str) -> None:
    """Refuses a dataset whose stored `codes` are not integers, naming a row that shows why.

    Arrow gives a column one type: one row of float codes stores every row's codes as floats, so the check is on
    the column, and the row named is the first one holding a non-integral code (else the first with codes).
    """
    from datasets import List, Value

    for column in columns:
        feature = dataset.features[column]
        part = feature.feature if isinstance(feature, List) else None
        codes = part.get("codes") if isinstance(part, dict) else None
        if codes is None or codes == Value("null"):
            continue
        inner = codes.feature if isinstance(codes, List) else None
        if isinstance(inner, Value) and ("int" in inner.dtype or inner.dtype == "null"):
            continue
        stored = inner.dtype if isinstance(inner, Value) else "nested lists" if isinstance(inner, List) else codes
        first_with_codes, culprit = None, None
        for index, row in enumerate(
            dataset.select_columns([c for c in (column, id_column) if c in dataset.column_names])
        ):
            for j, part_value in enumerate(row[column] or []):
                values = (part_value or {}).get("codes")
                if values is None:
                    continue
                if first_with_codes is None:
                    first_with_codes = (index, row.get(id_column), j, values)
                if any(isinstance(v, float) and not v.is_integer() for v in values):
                    culprit = (index, row.get(id_column), j, values)
                    break
            if culprit is not None:
                break
        if first_with_codes is None:
            continue
        index, row_id, j, values = culprit or first_with_codes
        _, problem = code_list(values)
        if culprit is not None:
            position, value = next((k, v) for k, v in enumerate(values) if isinstance(v, float) and not v.is_integer())
            problem = f"codes[{position}] is float {value}, not an integer code."
        raise InterleavedDataError(
            row_label(index, row_id),
            f"{column}[{j}].codes",
            f"{problem or 'the codes are not integers.'} The dataset stores the codes of every row as {stored} "
            "(Arrow gives a column one type, so one row of non-integer codes turns all of them into that type).",
            "store every image's codes as a flat list of integers (fix or drop the rows with float / boolean / "
            "nested codes), and build the dataset with `features=interleaved_features()`.",
        )


def _encode_or_locate(encoder: ImageEncoder, pending: list, names: list, on_error: str, errors: list) -> list:
    """Encodes all pending images in one go; if that fails, image by image to name the bad row."""
    if not pending:
        return []
    try:
        return list(encoder.encode([item[3] for item in pending]))
    except Exception:  # noqa: BLE001 - any processor / VQ failure is attributed to its row below
        pass
    results = []
    for i, _, _, image, field in pending:
        try:
            results.append(encoder.encode([image])[0])
        except Exception as error:  # noqa: BLE001
            wrapped = InterleavedDataError(
                names[i],
                field,
                f"the image ({getattr(image, 'mode', '?')}, {getattr(image, 'size', '?')}) cannot be encoded "
                f"({type(error).__name__}: {error}).",
                "replace the image or drop the row (on_error='skip').",
            )
            if on_error == "raise":
                raise wrapped from error
            errors[i] = str(wrapped)
            results.append(None)
    return results
