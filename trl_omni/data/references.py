"""Reference images: the drawings a row's reasoning should produce, carried in a `reference_images` column.

A row of the interleaved schema may carry, next to `prompt` / `completion` / `answer`, a column `reference_images`:
a list of image parts (the schema's part struct, `image_part(codes=...)` once pre-tokenized), one per reasoning
image, in order. [`~trl_omni.rewards.ReferenceImageReward`] scores drawn images against them during PeRPO, where the
reference completion itself is not part of the RL rows. Sources: the reasoning images of Zebra-CoT traces and the
drawings of bootstrapped rows (both are the image parts of `completion`, see [`add_reference_images`]), and the
Uni-Skills demo rows, which carry their solver drawings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .schema import InterleavedDataError, normalize_parts, part_list_feature


REFERENCE_COLUMN = "reference_images"


def reference_images_from_completion(row: Mapping[str, Any], source_column: str = "completion", index: Any = None):
    """The image parts of a row's `source_column`, in order (full parts of the schema).

    Example:
        ```python
        >>> reference_images_from_completion({"completion": ["I draw.", image_part(codes=grid), "Done."]})
        [{'type': 'image', ..., 'codes': [...]}]
        ```
    """
    name = row.get("id") if row.get("id") is not None else index
    if source_column not in row:
        raise InterleavedDataError(
            name, source_column, f"the row has no column {source_column!r} (columns: {sorted(row)}).",
            "pass source_column= naming the column that holds the reference completion.",
        )  # fmt: skip
    parts = normalize_parts(row[source_column], name, source_column)
    return [part for part in parts if part["type"] == "image"]


def add_reference_images(
    data: Any, column: str = REFERENCE_COLUMN, source_column: str = "completion", num_proc: int | None = None
):
    """Adds a `reference_images` column holding the image parts of each row's reference completion.

    Run it after `pretokenize_images` so the references carry `codes` (or pre-tokenize the new column as well);
    keep the column when the RL rows drop `completion`.

    Args:
        data: A `datasets.Dataset` or a list of row dicts in the interleaved schema.
        column: Name of the new column.
        source_column: Column holding the reference completion.
        num_proc: Processes for `datasets.map`.

    Returns:
        The same kind of object with the column added (a row without images gets an empty list).

    Example:
        ```python
        >>> train = add_reference_images(pretokenize_images(convert_zebra_cot(raw), model, processor))
        >>> rl_rows = train.remove_columns(["completion"])  # PeRPO rows: prompt, answer, reference_images
        ```
    """
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return [{**row, column: reference_images_from_completion(row, source_column, i)} for i, row in enumerate(data)]
    features = data.features.copy()
    features[column] = part_list_feature()
    return data.map(
        lambda row, index: {column: reference_images_from_completion(row, source_column, index)},
        with_indices=True,
        features=features,
        num_proc=num_proc,
        desc=f"Adding {column}",
    )
