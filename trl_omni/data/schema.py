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

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch


PART_KEYS = ("type", "text", "image", "path", "bytes", "base64", "codes")
IMAGE_SOURCE_KEYS = ("codes", "image", "bytes", "base64", "path")  # priority order
RESERVED_COLUMNS = ("image", "images")
_PART_KEY_SET = frozenset(PART_KEYS)


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


class DatasetFormatError(ValueError):
    """A dataset that does not fit the format it is read as: missing columns, no rows, an unreadable file. The
    message names the dataset (or file), what was found (the columns present, ...) and the fix."""


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
        values, problem = code_list(codes)
        if values is None:
            raise TypeError(f"image_part: {problem} Give a flat, row-major list of integer VQ codes.")
        part["codes"] = values
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


def row_label(index: Any, row_id: Any = None) -> Any:
    """How errors name a row: its index, with its id when it has one (`3 (id='zebra-cot-3')`)."""
    if row_id is None or row_id == "":
        return index
    return f"{index} (id={row_id!r})"


def _kind_of(value: Any) -> str:
    """A short description of a value for error messages: its type, and the value when it is short."""
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 40 else type(value).__name__


def _json_parts(text: str) -> bool:
    """Whether `text` is a part (or a list of parts) serialised as JSON rather than stored as a struct."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{" or '"type"' not in stripped:
        return False
    try:
        value = json.loads(stripped)
    except ValueError:
        return False
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(item, dict) and "type" in item for item in items)


def _refuse_json_parts(text: str, row: Any, field: str) -> None:
    if _json_parts(text):
        raise InterleavedDataError(
            row,
            field,
            "the value is a string holding JSON parts, not parts: it would be trained as literal JSON text.",
            "store parts as structs (lists of dicts; `json.loads` the column first, e.g. "
            "`dataset.map(lambda row: {'prompt': json.loads(row['prompt'])})`).",
        )


def _message_problem(part: Mapping[str, Any], row: Any, field: str) -> InterleavedDataError:
    return InterleavedDataError(
        row,
        field,
        f"a chat message ({{'role': {part.get('role')!r}, 'content': ...}}) where a part was expected; the "
        "interleaved collator takes `prompt` / `completion` as lists of text and image parts, not chat messages.",
        "convert each message's content into parts: the user turn -> `prompt`, the assistant turn -> `completion` "
        "(text_part / image_part; see docs/data-formats.md).",
    )


def normalize_part(part: Any, row: Any, field: str) -> dict[str, Any]:
    """Checks one part and returns it with every schema key present. Plain strings become text parts.

    A part is a struct: `type` is `"text"` or `"image"` (inferred only when unambiguous), a text part has a string
    `text` and no image source, an image part has at least one image source and no text, and no other key holds a
    value. Anything else raises an [`InterleavedDataError`] naming the row and the field.
    """
    if isinstance(part, str):
        _refuse_json_parts(part, row, field)
        return text_part(part)
    if not isinstance(part, Mapping):
        raise InterleavedDataError(
            row,
            field,
            f"expected a part (dict) or a string, got {_kind_of(part)}.",
            "use text_part(...) / image_part(...) (see docs/data-formats.md).",
        )
    if part.keys() != _PART_KEY_SET:
        extra = sorted(str(key) for key in part.keys() - _PART_KEY_SET if part[key] is not None)
        if "role" in extra or "content" in extra:
            raise _message_problem(part, row, field)
        if extra:
            raise InterleavedDataError(
                row,
                field,
                f"unknown part key(s) {extra}; a part has the keys {list(PART_KEYS)}.",
                f"rename or remove those keys (text goes in 'text', images in one of {list(IMAGE_SOURCE_KEYS)}).",
            )
    sources = [key for key in IMAGE_SOURCE_KEYS if part.get(key) is not None]
    text = part.get("text")
    kind = part.get("type")
    if kind is None:
        if text is not None and not sources:
            kind = "text"
        elif sources and text is None:
            kind = "image"
        else:
            raise InterleavedDataError(
                row,
                f"{field}.type",
                "the part has no 'type'" + (" and holds both text and an image." if sources else " and is empty."),
                "set 'type' to 'text' or 'image' (use text_part / image_part).",
            )
    if kind == "text":
        if not isinstance(text, str):
            found = "no text" if text is None else f"text of type {type(text).__name__}"
            raise InterleavedDataError(row, f"{field}.text", f"a text part has {found}.", "set 'text' to a string.")
        if sources:
            raise InterleavedDataError(
                row,
                f"{field}.{sources[0]}",
                f"a text part also holds image data in {sources}; it would be dropped without a word.",
                "put the image in its own part with type 'image' (image_part(...)) next to the text part.",
            )
        _refuse_json_parts(text, row, f"{field}.text")
        return text_part(text)
    if kind != "image":
        raise InterleavedDataError(row, f"{field}.type", f"unknown part type {kind!r}.", "use 'text' or 'image'.")
    if not sources:
        raise InterleavedDataError(
            row,
            field,
            "an image part has no image.",
            f"set one of {list(IMAGE_SOURCE_KEYS)} (see docs/data-formats.md).",
        )
    if text is not None and text != "":
        raise InterleavedDataError(
            row,
            f"{field}.text",
            f"an image part also holds text ({_kind_of(text)}); it would be dropped without a word.",
            "put the text in its own part with type 'text' (text_part(...)) next to the image part.",
        )
    normalized = dict.fromkeys(PART_KEYS)
    normalized["type"] = "image"
    for key in sources:
        normalized[key] = part[key]
    return normalized


def normalize_parts(value: Any, row: Any, column: str) -> list[dict[str, Any]]:
    """A column value (string, list of parts/strings, or None) as a list of full parts."""
    if value is None:
        return []
    if isinstance(value, str):
        _refuse_json_parts(value, row, column)
        return [text_part(value)] if value else []
    if isinstance(value, Mapping):
        if "role" in value or "content" in value:
            raise _message_problem(value, row, column)
        raise InterleavedDataError(
            row,
            column,
            "expected a list of parts, got a single dict.",
            "wrap the part in a list: `[part]` (see docs/data-formats.md).",
        )
    if not isinstance(value, Sequence):
        raise InterleavedDataError(
            row, column, f"expected a list of parts, got {_kind_of(value)}.", "see docs/data-formats.md."
        )
    return [normalize_part(part, row, f"{column}[{i}]") for i, part in enumerate(value)]


def check_answer(value: Any, row: Any, field: str = "answer", required: bool = False) -> str | None:
    """Returns the answer when it is a string (None when absent); raises naming the row and field otherwise.

    Answers are never converted: a NaN, a number or a list would be trained as its text (`"nan"`, `"['A', 'C']"`).
    """
    if value is None:
        if required:
            raise InterleavedDataError(row, field, "the answer is missing.", "give the final answer as a string.")
        return None
    if not isinstance(value, str):
        raise InterleavedDataError(
            row,
            field,
            f"the answer must be a string, got {_kind_of(value)}.",
            "store answers as strings (cast the column: `dataset.cast_column(name, Value('string'))` after "
            "fixing NaN / list values), or None for a row without an answer.",
        )
    if required and not value.strip():
        raise InterleavedDataError(row, field, "the answer is empty.", "give the final answer text.")
    return value


_TORCH_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def code_list(codes: Any) -> tuple[list[int] | None, str]:
    """`(codes as a list of ints, "")` when `codes` is a flat sequence of integers, else `(None, problem)`.

    Checked, not converted: floats, booleans, strings and nested lists are refused (they would become other codes
    or another grid). Lists of Python ints (what `datasets` returns) cost one pass over the element types.
    """
    if isinstance(codes, torch.Tensor | np.ndarray):
        if isinstance(codes, torch.Tensor):
            integer = codes.dtype in _TORCH_INTEGER_DTYPES
        else:
            integer = np.issubdtype(codes.dtype, np.integer)
        if not integer:
            return None, f"the codes are a {type(codes).__name__} of dtype {codes.dtype}, not integers."
        if codes.ndim != 1:
            return None, f"the codes are a {type(codes).__name__} of shape {tuple(codes.shape)}, not a flat list."
        return codes.tolist(), ""
    if isinstance(codes, str | bytes | Mapping) or not isinstance(codes, Sequence):
        return None, f"the codes must be a list of integers, got {_kind_of(codes)}."
    if set(map(type, codes)) <= {int}:
        return list(codes), ""
    for position, code in enumerate(codes):
        if isinstance(code, Sequence | np.ndarray | torch.Tensor) and not isinstance(code, str):
            widths = {len(item) if hasattr(item, "__len__") else None for item in codes}
            shape = f" of shape ({len(codes)}, {widths.pop()})" if len(widths) == 1 else ""
            return None, f"the codes are a nested list{shape}, not a flat row-major list."
        if isinstance(code, bool) or not isinstance(code, int | np.integer):
            return None, f"codes[{position}] is {_kind_of(code)}, not an integer code."
    return [int(code) for code in codes], ""


def check_codes(codes: Any, row: Any, field: str, image_vocabulary: Any = None) -> list[int]:
    """The codes of an image part as a list of ints, checked: a flat list of integers and, with an
    [`ImageVocabulary`], exactly its `tokens_per_image` of them, each in `[0, num_codes)`.

    Raises:
        InterleavedDataError: naming the row, the field (`...codes`), what was found and the fix.
    """
    values, problem = code_list(codes)
    vocab = image_vocabulary
    if values is not None and vocab is not None:
        count, num_codes = vocab.tokens_per_image, vocab.num_codes
        low, high = (min(values), max(values)) if values else (None, None)
        height, width = vocab.grid_size
        if len(values) != count:
            problem = f"the image has {len(values)} codes; this model's {height}x{width} grid needs exactly {count}."
        elif values and not 0 <= low <= high < num_codes:
            problem = f"codes lie in [{low}, {high}]; this model's codes are in [0, {num_codes})."
    if problem:
        need = f"{vocab.tokens_per_image} integers in [0, {vocab.num_codes})" if vocab is not None else "integers"
        raise InterleavedDataError(
            row,
            field if field.endswith(".codes") else f"{field}.codes",
            problem,
            f"store the image's codes as a flat, row-major list of {need} (re-encode the image with "
            "`pretokenize_images` and this model's processor), or set `codes` to None so the image is encoded from "
            "its source.",
        )
    return values


def check_column_names(column_names: Iterable[str]) -> None:
    """Raises when a dataset has a top-level `image` / `images` column (TRL would switch to its vision path)."""
    bad = [name for name in column_names if name in RESERVED_COLUMNS]
    if bad:
        raise ValueError(
            f"Top-level column(s) {bad} switch TRL's SFT trainer to its vision collator. Fix: put images inside "
            "`prompt` / `completion` parts (see docs/data-formats.md) or rename the column(s)."
        )
