"""The dataset-level length pass: rows too long for `max_length` are dropped (counted, logged) before batching.

Dropping inside the collator only works while a batch keeps at least one row; with one row per batch (the usual
setting for 7B models) the first over-long row would stop training. Deciding once per dataset removes the problem at
any batch size, and never cuts an image: pre-tokenized rows are kept only when they fit, interleaved rows when the
collator's own length policy keeps them ([`InterleavedDataCollator.keeps`], which counts images as whole spans
without encoding them).
"""

from __future__ import annotations

import logging
from typing import Any


logger = logging.getLogger(__name__)


def drop_overlong_rows(
    dataset: Any,
    max_length: int | None,
    collator: Any = None,
    name: str = "train",
    batch_size: int = 512,
    skip_report: Any = None,
) -> Any:
    """Returns `dataset` without the rows that cannot be trained within `max_length`.

    Pre-tokenized rows (an `input_ids` column) are kept when they are at most `max_length` long. Interleaved rows
    are kept when `collator.keeps(rows)` says so (the collator's own `max_length` and `length_policy` apply). Other
    datasets are returned as they are. The dropped rows are counted and logged with a few of their ids; a dataset
    left empty raises. An `IterableDataset` is filtered lazily (nothing to count up front).

    Args:
        dataset: A `datasets.Dataset` / `IterableDataset` (anything else is returned unchanged).
        max_length: Longest sequence for pre-tokenized rows (None: keep all).
        collator: An [`InterleavedDataCollator`] for interleaved rows (or anything with `keeps(rows)`).
        name: The dataset's name in messages (`"train"`, `"eval"`, ...).
        batch_size: Rows measured per collator call.
        skip_report: Optional [`~trl_omni.data.report.SkipReport`] that records the dropped rows (stage
            `"<name> rows"`), for the end-of-run summary.

    Example:
        ```python
        >>> collator = InterleavedDataCollator(processor, vocab, max_length=5100)
        >>> train = drop_overlong_rows(train, 5100, collator)  # logs "Dropped 12 of 1000 train rows ..."
        ```
    """
    from datasets import Dataset, IterableDataset

    if not isinstance(dataset, Dataset | IterableDataset):
        return dataset
    columns = dataset.column_names or []
    if "input_ids" in columns:
        if max_length is None:
            return dataset

        def keeps(rows: list[dict]) -> list[bool]:
            return [len(row["input_ids"]) <= max_length for row in rows]

        limit, policy = max_length, "drop (pre-tokenized rows are never cut: a cut could slice an image)"
    elif collator is not None and hasattr(collator, "keeps") and getattr(collator, "max_length", None) is not None:
        keeps = collator.keeps
        limit, policy = collator.max_length, repr(collator.length_policy)
    else:
        return dataset

    def batch_filter(batch: dict[str, list]) -> list[bool]:
        return keeps([dict(zip(batch, values)) for values in zip(*batch.values())])

    if isinstance(dataset, IterableDataset):
        return dataset.filter(batch_filter, batched=True, batch_size=batch_size)
    mask: list[bool] = []
    for batch in dataset.iter(batch_size=batch_size):
        mask += batch_filter(batch)
    dropped = [index for index, kept in enumerate(mask) if not kept]
    if not dropped:
        return dataset
    if len(dropped) == len(dataset):
        raise ValueError(
            f"Every {name} row ({len(dataset)}) is longer than max_length={limit}: nothing left to train. Raise "
            "`max_length` (the Omni-R1 authors used 5100: four 1,026-token Anole images plus text)."
        )
    ids = dataset.select(dropped[:20])["id"] if "id" in columns else dropped[:20]
    if skip_report is not None:
        reason = f"longer than max_length={limit}, length policy {policy}"
        skip_report.add(f"{name} rows", len(dropped), len(dataset), reason, rows=ids, log=False)
    logger.warning(
        "Dropped %d of %d %s rows longer than max_length=%d before batching (length policy %s), e.g. %s. Raise "
        "`max_length` to keep them.",
        len(dropped),
        len(dataset),
        name,
        limit,
        policy,
        ", ".join(map(str, ids[:5])),
    )
    return dataset.select([index for index, kept in enumerate(mask) if kept])
