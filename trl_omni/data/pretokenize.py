"""`pretokenize_images`: encode every image of an interleaved dataset into VQ codes once, cached by `datasets`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ..models.encoding import ImageEncoder
from .images import load_image
from .schema import IMAGE_SOURCE_KEYS, InterleavedDataError, check_column_names, normalize_parts, part_list_feature


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
):
    """Encodes every image part of `dataset` into VQ codes once, so training never re-encodes an image.

    Runs `dataset.map(batched=True)`: each map batch decodes its images (PIL / bytes / base64 / files confined to
    `image_root`; any mode or size, converted to RGB and resized by the model's image processor) and encodes them in
    batches of `encode_batch_size` through the model's VQ encoder ([`ImageEncoder`]). The result is fingerprinted from
    the input dataset's fingerprint, the VQ weights, the image-processor settings and these arguments, so a dataset
    stored on disk is encoded once and then read from the `datasets` cache (progress is shown by `datasets`).
    Existing `codes` are checked (count and range) and kept.

    Args:
        dataset: A `datasets.Dataset` in the interleaved schema (see `docs/data-formats.md`).
        model: The Chameleon / Anole model whose VQ encoder defines the codes.
        processor: Its `ChameleonProcessor`.
        image_root: Directory that confines image `path` reads (`..` / absolute paths outside it are refused).
        columns: Columns holding parts.
        batch_size: Rows per `datasets.map` batch.
        encode_batch_size: Images per VQ forward.
        on_error: `"raise"` (default): a bad image raises an error naming the row, the field and the fix.
            `"skip"`: rows with a bad image are dropped, counted and logged.
        keep_raw_images: Keep the raw image sources next to the codes (default: cleared, to keep the dataset small).
        num_proc: Processes for `datasets.map` (each holds a copy of the model; keep None on one device).
        load_from_cache_file: Passed to `datasets.map`.
        image_encoder: A ready [`ImageEncoder`] (built from `model` / `processor` when omitted).
        desc: Progress-bar label.

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
        raise ValueError(f"Columns {missing} are not in the dataset (columns: {dataset.column_names}).")
    check_column_names(dataset.column_names)
    encoder = image_encoder or ImageEncoder(model, processor, batch_size=encode_batch_size)
    vocab = encoder.vocab
    root = None if image_root is None else os.fspath(image_root)

    def check_codes(codes: Any, row: Any, field: str) -> list[int]:
        codes = [int(code) for code in codes]
        if len(codes) != vocab.tokens_per_image or (codes and not 0 <= min(codes) <= max(codes) < vocab.num_codes):
            raise InterleavedDataError(
                row,
                f"{field}.codes",
                f"pre-tokenized image has {len(codes)} codes in "
                f"[{min(codes, default=None)}, {max(codes, default=None)}]; this model needs exactly "
                f"{vocab.tokens_per_image} codes in [0, {vocab.num_codes}).",
                "drop `codes` (set it to None) so the image is re-encoded from its source, or re-encode it with "
                "this model's processor.",
            )
        return codes

    def encode_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows = len(indices)
        errors: list[str | None] = [None] * rows
        out = {column: [None] * rows for column in columns}
        pending: list[tuple[int, str, int, Any, str]] = []  # (row, column, part, image, field)
        for i, index in enumerate(indices):
            row_pending = []
            try:
                for column in columns:
                    parts = normalize_parts(batch[column][i], index, column)
                    for j, part in enumerate(parts):
                        if part["type"] != "image":
                            continue
                        field = f"{column}[{j}]"
                        if part["codes"] is not None:
                            part["codes"] = check_codes(part["codes"], index, field)
                        else:
                            row_pending.append((i, column, j, load_image(part, root, index, field), field))
                    out[column][i] = parts
            except InterleavedDataError as error:
                if on_error == "raise":
                    raise
                errors[i] = str(error)  # the row's parts are emptied below
                continue
            pending += row_pending

        for (i, column, j, _, _), codes in zip(
            pending, _encode_or_locate(encoder, pending, indices, on_error, errors)
        ):
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
        [dataset._fingerprint, encoder.fingerprint(), root, list(columns), on_error, keep_raw_images, _VERSION]
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
        logger.warning(
            "pretokenize_images skipped %d of %d rows with bad images (on_error='skip'): rows %s. First: %s",
            len(errors),
            len(encoded),
            [i for i, _ in errors[:20]],
            errors[0][1],
        )
        encoded = encoded.filter(lambda error: error is None, input_columns=_ERROR_COLUMN)
    return encoded.remove_columns(_ERROR_COLUMN)


def _encode_or_locate(encoder: ImageEncoder, pending: list, indices: list[int], on_error: str, errors: list) -> list:
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
                indices[i],
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
