"""Checks of pre-tokenized rows (`input_ids` + `completion_mask` / `labels`, TRL's format) before training on them.

A pre-tokenized row skips the collator, so nothing else would notice an image span cut short, image tokens outside
any span, a mask of another length or ids outside the vocabulary: the model would be trained on them. The checks
run once over the whole dataset, a batch of rows at a time, in numpy / torch (the image spans through the core's
[`ImageVocabulary.parse_segments`]), never a Python loop over tokens.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .report import SkipReport
from .schema import DatasetFormatError, InterleavedDataError, row_label


logger = logging.getLogger(__name__)

_MASK_COLUMNS = ("completion_mask", "assistant_masks", "labels")


def validate_pretokenized_rows(
    dataset: Any,
    image_vocabulary: Any,
    *,
    on_error: str = "raise",
    what: str = "train",
    id_column: str = "id",
    skip_report: SkipReport | None = None,
    batch_size: int = 256,
) -> Any:
    """Checks every pre-tokenized row of `dataset`; raises on the first bad row, or drops the bad rows.

    A row is bad when:
    - `input_ids` is missing, empty, not a list of integers, or holds ids outside `[0, vocab_size)`;
    - `completion_mask` / `assistant_masks` / `labels` has another length than `input_ids`, a mask holds values
      other than 0 / 1, `labels` holds values other than -100 or token ids;
    - nothing is trained (the mask is all 0, the labels all -100);
    - an image span is cut (BOI without `H*W` image tokens and EOI), or image tokens lie outside any BOI ... EOI
      span ([`ImageVocabulary.parse_segments`]);
    - the mask (or labels) switches between prompt and completion inside an image span (half an image trained).

    Args:
        dataset: A `datasets.Dataset` (checked now) or `IterableDataset` (checked lazily, as rows stream in).
        image_vocabulary: The model's [`ImageVocabulary`].
        on_error: `"raise"`: an [`InterleavedDataError`] naming the first bad row, the field, what was found and
            the fix. `"skip"`: bad rows are dropped, counted, logged and added to `skip_report` (a dataset whose
            every row is bad still raises).
        what: Name of the dataset in messages (`"train"`, `"eval"`).
        id_column: Column naming a row in errors, next to its index.
        skip_report: A [`SkipReport`] that records the dropped rows.
        batch_size: Rows checked at once.

    Returns:
        The dataset (without the bad rows under `on_error="skip"`).

    Example:
        ```python
        >>> train = validate_pretokenized_rows(train, ImageVocabulary.from_model(model, processor), on_error="skip")
        ```
    """
    from datasets import Dataset, IterableDataset

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    if isinstance(dataset, IterableDataset):
        return _validate_streamed(dataset, image_vocabulary, on_error, what, id_column)
    if not isinstance(dataset, Dataset):
        return dataset
    if "input_ids" not in dataset.column_names:
        raise DatasetFormatError(
            f"The {what} dataset has no 'input_ids' column (its columns: {dataset.column_names}), so it is not "
            "pre-tokenized. Fix: give rows with `input_ids` (+ `completion_mask`), or interleaved rows "
            "(`prompt` / `completion` parts; see docs/data-formats.md)."
        )
    if len(dataset) == 0:
        raise DatasetFormatError(f"The {what} dataset has no rows. Fix: check the file, split and filters.")
    columns = ["input_ids"] + [column for column in _MASK_COLUMNS if column in dataset.column_names]
    table = dataset.select_columns(columns).with_format("arrow")
    bad: dict[int, tuple[str, str, str]] = {}
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc=f"Checking pre-tokenized {what} rows", disable=len(starts) < 20, leave=False):
        batch = table[start : start + batch_size]
        for offset, problem in _check_batch({c: batch.column(c) for c in columns}, image_vocabulary).items():
            bad[start + offset] = problem
    if not bad:
        return dataset
    ids = dataset[id_column] if id_column in dataset.column_names else None

    def error_for(index: int) -> InterleavedDataError:
        field, problem, fix = bad[index]
        return InterleavedDataError(row_label(index, ids[index] if ids else None), field, problem, fix)

    indices = sorted(bad)
    if on_error == "raise":
        raise error_for(indices[0])
    if len(indices) == len(dataset):
        raise DatasetFormatError(
            f"Every one of the {len(dataset)} {what} rows is bad and was skipped (on_error='skip'). First: "
            f"{error_for(indices[0])}"
        )
    (skip_report if skip_report is not None else SkipReport()).add(
        f"pre-tokenized {what} rows",
        len(indices),
        len(dataset),
        "on_error='skip'",
        [str(error_for(index)) for index in indices[:3]],
        indices,
    )
    bad_set = set(indices)
    return dataset.select([i for i in range(len(dataset)) if i not in bad_set])


def _validate_streamed(dataset: Any, vocab: Any, on_error: str, what: str, id_column: str) -> Any:
    """The same checks on a streamed dataset, as its rows arrive (raise, or drop with a logged count)."""
    import pyarrow as pa

    skipped = 0

    def check(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        nonlocal skipped
        columns = ["input_ids"] + [column for column in _MASK_COLUMNS if column in batch]
        arrays = {column: pa.array(batch[column]) for column in columns}
        problems = _check_batch(arrays, vocab)
        keep = [i not in problems for i in range(len(indices))]
        for offset, (field, problem, fix) in sorted(problems.items()):
            row_id = batch[id_column][offset] if id_column in batch else None
            error = InterleavedDataError(row_label(indices[offset], row_id), field, problem, fix)
            if on_error == "raise":
                raise error
            skipped += 1
            logger.warning("Skipped a bad pre-tokenized %s row (on_error='skip'; %d so far): %s", what, skipped, error)
        return {**batch, "__trl_omni_keep__": keep}

    checked = dataset.map(check, batched=True, with_indices=True)
    if on_error == "raise":
        return checked.remove_columns("__trl_omni_keep__")
    return checked.filter(lambda keep: keep, input_columns="__trl_omni_keep__").remove_columns("__trl_omni_keep__")


def _flat(array: Any) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, str]:
    """`(values, lengths, nulls, value_type)` of an Arrow list column (values None when not a list column)."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = pa.concat_arrays(array.chunks) if array.num_chunks != 1 else array.chunk(0)
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        return None, np.zeros(len(array), dtype=np.int64), nulls, str(array.type)
    offsets = array.offsets.to_numpy()
    lengths = np.diff(offsets).astype(np.int64)
    lengths[nulls] = 0
    values = array.flatten()
    value_type = str(values.type)
    if pa.types.is_integer(values.type) or pa.types.is_boolean(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.int64), lengths, nulls, value_type
    return None, lengths, nulls, value_type


def _aligned(values: np.ndarray, value_lengths: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-token values laid out on the rows of `input_ids` (rows of another length, already flagged, are cut or
    padded with False), so the span checks of the other rows still run in one pass."""
    if np.array_equal(value_lengths, lengths):
        return values
    width = int(max(value_lengths.max(initial=0), lengths.max(initial=0)))
    positions = np.arange(width)[None, :]
    padded = np.zeros((len(lengths), width), dtype=values.dtype)
    padded[positions < value_lengths[:, None]] = values
    return padded[positions < lengths[:, None]]


def _row_of(positions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row of each flat position, given the row lengths."""
    return np.searchsorted(np.cumsum(lengths), positions, side="right")


def _check_batch(arrays: dict[str, Any], vocab: Any) -> dict[int, tuple[str, str, str]]:
    """`{row offset: (field, problem, fix)}` for the bad rows of one batch (the first problem of each row)."""
    problems: dict[int, tuple[str, str, str]] = {}

    def flag(rows: Any, field: str, problem: Any, fix: str) -> None:
        for row in np.unique(np.asarray(rows, dtype=np.int64)).tolist():
            if row not in problems:
                problems[row] = (field, problem(row) if callable(problem) else problem, fix)

    rebuild = "rebuild the row with the model's tokenizer and `ImageVocabulary.image_span_ids(codes)` for images"
    ids, lengths, nulls, value_type = _flat(arrays["input_ids"])
    num_rows = len(lengths)
    if ids is None:
        flag(range(num_rows), "input_ids", f"`input_ids` must be lists of integer token ids, got {value_type}.",
             rebuild + ".")  # fmt: skip
        return problems
    flag(np.flatnonzero(nulls | (lengths == 0)), "input_ids", "`input_ids` is empty.", "drop the row.")
    vocab_size = vocab.vocab_size
    outside = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if outside.size:
        rows = _row_of(outside, lengths)
        first = dict(zip(rows[::-1].tolist(), ids[outside][::-1].tolist()))  # first offending id of each row
        flag(rows, "input_ids", lambda r: f"token id {first[r]} is outside the vocabulary [0, {vocab_size}); were "
             "image codes written instead of token ids?", rebuild + ".")  # fmt: skip

    masks: dict[str, np.ndarray] = {}
    for column in _MASK_COLUMNS:
        if column not in arrays:
            continue
        values, mask_lengths, mask_nulls, mask_type = _flat(arrays[column])
        if values is None:
            flag(range(num_rows), column, f"`{column}` must be lists of integers, got {mask_type}.",
                 f"store `{column}` as a list of ints per row.")  # fmt: skip
            continue
        flag(np.flatnonzero(mask_nulls), column, f"`{column}` is missing (None) in this row.",
             f"give every row a `{column}` (one entry per token of `input_ids`).")  # fmt: skip
        flag(np.flatnonzero(~mask_nulls & (mask_lengths != lengths)), column, lambda r, c=column, m=mask_lengths:
             f"`{c}` has {int(m[r])} entries but `input_ids` has {int(lengths[r])}.",
             f"give `{column}` exactly one entry per token of `input_ids`.")  # fmt: skip
        if column == "labels":
            wrong = (values != -100) & ((values < 0) | (values >= vocab_size))
            fix = "use -100 for positions that are not trained and the token id elsewhere."
            allowed = "-100 or token ids"
        else:
            wrong = (values != 0) & (values != 1)
            fix = "use 1 for completion tokens (trained) and 0 for prompt tokens."
            allowed = "0 / 1"
        if wrong.any():
            flag(_row_of(np.flatnonzero(wrong), mask_lengths), column, f"`{column}` holds values other than "
                 f"{allowed}.", fix)  # fmt: skip
        trained = (values != -100) if column == "labels" else values.astype(bool)
        masks[column] = _aligned(trained, mask_lengths, lengths)

    for column, trained in masks.items():
        totals = np.concatenate([[0], np.cumsum(trained)])
        ends = np.cumsum(lengths)
        per_row = totals[ends] - totals[ends - lengths]
        flag(np.flatnonzero((per_row == 0) & (lengths > 0)), column, f"`{column}` trains no token (nothing to "
             "learn from this row).", f"mark the completion in `{column}`, or drop the row.")  # fmt: skip

    if num_rows and int(lengths.max()) > 0:
        _check_image_spans(ids, lengths, masks, vocab, flag)
    return problems


def _check_image_spans(ids: np.ndarray, lengths: np.ndarray, masks: dict, vocab: Any, flag) -> None:
    """Cut spans, stray image tokens and masks that change inside a span, through the core's segment parser."""
    num_rows, width = len(lengths), int(lengths.max())
    valid = torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]
    padded = torch.zeros(num_rows, width, dtype=torch.long)
    padded[valid] = torch.from_numpy(ids)
    segments = vocab.parse_segments(padded, attention_mask=valid)
    fix = "build every image as `ImageVocabulary.image_span_ids(codes)` (BOI + H*W codes + EOI) and never cut a row "
    fix += "inside an image (drop over-long rows instead)."

    stray = segments.stray_image_tokens
    flag(torch.nonzero(stray > 0).flatten().numpy(), "input_ids",
         lambda r: f"{int(stray[r])} image tokens lie outside any BOI ... EOI image span.", fix)  # fmt: skip
    cut = ~segments.complete
    if bool(cut.any()):
        rows, starts = segments.batch_index[cut], segments.start[cut]
        counts = segments.num_image_tokens[cut]
        first = {}
        for row, start, count in zip(rows.tolist()[::-1], starts.tolist()[::-1], counts.tolist()[::-1]):
            first[row] = (start, count)
        flag(rows.numpy(), "input_ids", lambda r: f"the image span at position {first[r][0]} is cut or malformed "
             f"({first[r][1]} image tokens, {vocab.tokens_per_image} needed, closed by EOI).", fix)  # fmt: skip

    complete = segments.complete
    if not masks or not bool(complete.any()):
        return
    rows, starts, ends = segments.batch_index[complete], segments.start[complete], segments.end[complete]
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    flat_start, flat_end = offsets[rows] + starts, offsets[rows] + ends
    for column, trained in masks.items():
        totals = torch.from_numpy(np.concatenate([[0], np.cumsum(trained)]))
        inside = totals[flat_end] - totals[flat_start]
        split = (inside != 0) & (inside != ends - starts)
        if bool(split.any()):
            where = dict(zip(rows[split].tolist()[::-1], starts[split].tolist()[::-1]))
            flag(rows[split].numpy(), column, lambda r, c=column, w=where: f"`{c}` switches between prompt and completion "
                 f"inside the image span at position {w[r]} (part of an image would be trained).",
                 f"mark a whole image span (BOI to EOI) as prompt or as completion in `{column}`.")  # fmt: skip
