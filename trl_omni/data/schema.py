"""The interleaved dataset schema of trl-omni.

A row holds an ordered list of *parts* in `prompt` and in `completion` (text pieces and images), plus the final
`answer` as a string:

```python
{
    "id": "zebra-cot-17",                      # optional, names the row in errors and warnings
    "prompt": [text_part("Which square..."), image_part(image=pil_image)],
    "completion": [text_part("THOUGHT 0: I draw the grid."), image_part(codes=[...]), text_part("THOUGHT 1: ...")],
    "answer": "B",                             # optional for "plain" / "chat", required for "templated"
}
```

Every part is a dict with the same keys (so that Arrow stores a list of structs):

| key      | type            | meaning                                                                        |
|----------|-----------------|--------------------------------------------------------------------------------|
| `type`   | `"text"`/`"image"` | kind of part                                                                |
| `text`   | str             | the text of a text part                                                         |
| `image`  | PIL image       | an in-memory image (stored by `datasets` as `Image()`: PNG bytes)             |
| `path`   | str             | an image file, relative to the configured `image_root` (never outside it)     |
| `bytes`  | bytes           | an encoded image file (PNG, JPEG, ...)                                        |
| `base64` | str             | the same, base64 encoded (a `data:image/...;base64,` prefix is accepted)       |
| `codes`  | list[int]       | pre-tokenized VQ codes, `H*W` of them, row-major (see `pretokenize_images`)    |

An image part sets one image source; when several are set, `codes` wins, then `image`, `bytes`, `base64`, `path`.
Top-level columns are never called `image` / `images`: those names switch TRL's SFT trainer to its vision path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


PART_KEYS = ("type", "text", "image", "path", "bytes", "base64", "codes")
IMAGE_SOURCE_KEYS = ("codes", "image", "bytes", "base64", "path")  # priority order
RESERVED_COLUMNS = ("image", "images")


class InterleavedDataError(ValueError):
    """Bad interleaved input. The message names the row, the field and the fix.

    Attributes:
        row: Row index (or id) of the offending row.
        field: Field path inside the row, e.g. `"completion[2].codes"`.
        fix: What the user should do.
    """

    def __init__(self, row: Any, field: str, problem: str, fix: str):
        self.row = row
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"Row {row}, field '{field}': {problem} Fix: {fix}")


def text_part(text: str) -> dict[str, Any]:
    """A text part with every schema key set (the others None).

    Example:
        ```python
        >>> text_part("What is shown?")["type"]
        'text'
        ```
    """
    part = dict.fromkeys(PART_KEYS)
    part["type"] = "text"
    part["text"] = text
    return part


def image_part(
    image: Any = None,
    *,
    path: str | None = None,
    bytes: bytes | None = None,
    base64: str | None = None,
    codes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """An image part with every schema key set. Give exactly one source.

    Args:
        image: A PIL image.
        path: File path relative to the `image_root` used when images are read.
        bytes: Encoded image file content.
        base64: Base64 of an encoded image file.
        codes: Pre-tokenized VQ codes (`H*W`, row-major).

    Example:
        ```python
        >>> image_part(path="figures/1.png")["path"]
        'figures/1.png'
        ```
    """
    sources = {"image": image, "path": path, "bytes": bytes, "base64": base64, "codes": codes}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) != 1:
        raise ValueError(f"image_part needs exactly one image source; got {given or 'none'}.")
    part = dict.fromkeys(PART_KEYS)
    part["type"] = "image"
    part.update(sources)
    if codes is not None:
        part["codes"] = [int(c) for c in codes]
    return part


def interleaved_features(columns: Iterable[str] = ("prompt", "completion"), **extra: Any):
    """`datasets.Features` for the interleaved schema: `columns` are lists of parts, `answer` and `id` strings.

    Args:
        columns: Columns holding lists of parts.
        **extra: Further columns, name -> `datasets` feature (e.g. `source=Value("string")`).

    Example:
        ```python
        >>> from datasets import Dataset
        >>> ds = Dataset.from_list(rows, features=interleaved_features())
        ```
    """
    from datasets import Features, Value

    features = {name: part_list_feature() for name in columns}
    features["answer"] = Value("string")
    features["id"] = Value("string")
    features.update(extra)
    return Features(features)


def part_list_feature():
    """The `datasets` feature of one column of parts."""
    from datasets import Image, List, Value

    return List(
        {
            "type": Value("string"),
            "text": Value("string"),
            "image": Image(),
            "path": Value("string"),
            "bytes": Value("binary"),
            "base64": Value("string"),
            "codes": List(Value("int32")),
        }
    )


def normalize_part(part: Any, row: Any, field: str) -> dict[str, Any]:
    """Checks one part and returns it with every schema key present. Plain strings become text parts."""
    if isinstance(part, str):
        return text_part(part)
    if not isinstance(part, Mapping):
        raise InterleavedDataError(
            row,
            field,
            f"expected a part (dict) or a string, got {type(part).__name__}.",
            "use text_part / image_part.",
        )
    kind = part.get("type")
    if kind is None:
        kind = "text" if part.get("text") is not None else "image"
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InterleavedDataError(row, f"{field}.text", "a text part has no text.", "set 'text' to a string.")
        return text_part(text)
    if kind != "image":
        raise InterleavedDataError(row, f"{field}.type", f"unknown part type {kind!r}.", "use 'text' or 'image'.")
    normalized = dict.fromkeys(PART_KEYS)
    normalized["type"] = "image"
    for key in IMAGE_SOURCE_KEYS:
        normalized[key] = part.get(key)
    if all(normalized[key] is None for key in IMAGE_SOURCE_KEYS):
        raise InterleavedDataError(
            row,
            field,
            "an image part has no image.",
            f"set one of {list(IMAGE_SOURCE_KEYS)} (see docs/data-formats.md).",
        )
    return normalized


def normalize_parts(value: Any, row: Any, column: str) -> list[dict[str, Any]]:
    """A column value (string, list of parts/strings, or None) as a list of full parts."""
    if value is None:
        return []
    if isinstance(value, str):
        return [text_part(value)] if value else []
    if not isinstance(value, Sequence):
        raise InterleavedDataError(
            row, column, f"expected a list of parts, got {type(value).__name__}.", "see docs/data-formats.md."
        )
    return [normalize_part(part, row, f"{column}[{i}]") for i, part in enumerate(value)]


def check_column_names(column_names: Iterable[str]) -> None:
    """Raises when a dataset has a top-level `image` / `images` column (TRL would switch to its vision path)."""
    bad = [name for name in column_names if name in RESERVED_COLUMNS]
    if bad:
        raise ValueError(
            f"Top-level column(s) {bad} switch TRL's SFT trainer to its vision collator. Fix: put images inside "
            "`prompt` / `completion` parts (see docs/data-formats.md) or rename the column(s)."
        )
