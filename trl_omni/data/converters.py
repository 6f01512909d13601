"""Converters from public dataset schemas to the trl-omni interleaved schema (see `docs/data-formats.md`).

- Zebra-CoT (Omni-R1's SFT data): `Question`, `Text Reasoning Trace`, `Final Answer`, `problem_image_k`,
  `reasoning_image_k`; images are referenced in the text as `<image_start>[problem_image_1]<image_end>`.
- M3CoT (Omni-R1-Zero seeds): `id, category, image_id, question, choices, context, answer, rationale, split, image,
  domain, topic`; the rationale is text only.
- Omni-Bench (evaluation): `question`, `image` (base64), `answer`, plus source / dataset fields (kept as they are).

Each converter has a per-row function (`*_row_to_interleaved(row, index)`) and a dataset function
(`convert_*(dataset, on_error="raise")`) that maps it with `datasets` and drops the source columns. Bad rows raise an
[`InterleavedDataError`] naming the row, the field and the fix; with `on_error="skip"` they are dropped, counted and
logged instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .loading import check_format_columns, check_not_empty, rows_to_dataset
from .report import SkipReport
from .schema import DatasetFormatError, InterleavedDataError, image_part, interleaved_features, row_label, text_part


logger = logging.getLogger(__name__)

ZEBRA_COT_REFERENCE = re.compile(r"<image_start>\s*\[([^\]]*)\]\s*<image_end>")
IMAGE_PLACEHOLDER_TEXT = "<image>"
_ERROR_COLUMN = "__trl_omni_conversion_error__"


def _source_image_part(value: Any, row: Any, field: str, strings: str = "path") -> dict[str, Any]:
    """An image part from a source-dataset image value (PIL, `datasets` storage dict, bytes, path or base64 str)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return image_part(image=value)
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return image_part(bytes=value["bytes"])
        if value.get("path"):
            return image_part(path=value["path"])
    if isinstance(value, (bytes, bytearray)):
        return image_part(bytes=bytes(value))
    if isinstance(value, str) and value:
        return image_part(base64=value) if strings == "base64" else image_part(path=value)
    raise InterleavedDataError(
        row, field, f"unsupported image value of type {type(value).__name__}.", "give a PIL image, bytes or a path."
    )


def _check_row(row: Any, index: Any) -> None:
    if not isinstance(row, Mapping):
        raise InterleavedDataError(index, "<row>", f"expected a dict, got {type(row).__name__}.", "pass dict rows.")


def _text(row: Mapping[str, Any], column: str, index: Any, what: str, required: bool = True) -> str:
    """The string in `column`: present, a `str` (never converted), and non-blank when `required`."""
    if column not in row:
        raise InterleavedDataError(
            index,
            column,
            f"the row has no {column!r} column (its columns: {sorted(map(str, row))}).",
            f"rename the column holding the {what} to {column!r}, or read the data as its own format.",
        )
    value = row[column]
    if value is not None and not isinstance(value, str):
        raise InterleavedDataError(
            index,
            column,
            f"the {what} must be a string, got {type(value).__name__} {value!r:.40}.",
            f"store the {what} as a string (cast the column to Value('string') after fixing NaN / list values).",
        )
    if required and (value is None or not value.strip()):
        raise InterleavedDataError(index, column, f"the {what} is empty.", f"give a non-empty {what} or drop the row.")
    return value or ""


def _text_parts(text: str) -> list[dict[str, Any]]:
    return [text_part(text)] if text else []


def zebra_cot_row_to_interleaved(row: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Converts one Zebra-CoT row.

    The question (with its referenced problem images) becomes the prompt, the reasoning trace (with its referenced
    reasoning images, `THOUGHT k:` kept verbatim) the completion, `Final Answer` the answer. Problem images that the
    question does not reference are placed before the question text; reasoning images that the trace does not
    reference have no position and are left out (logged).

    Raises:
        InterleavedDataError: a missing column, a question / trace / answer that is empty or not a string, a
            reference to a missing image, an image referenced twice.
    """
    name = index if index is not None else "?"
    _check_row(row, name)
    question = _text(row, "Question", name, "question")
    trace = _text(row, "Text Reasoning Trace", name, "reasoning trace")
    answer = _text(row, "Final Answer", name, "final answer")
    used: dict[str, str] = {}

    def interleave(text: str, column: str) -> list[dict[str, Any]]:
        parts, position = [], 0
        for match in ZEBRA_COT_REFERENCE.finditer(text):
            parts += _text_parts(text[position : match.start()])
            key = match.group(1).strip()
            if key in used:
                raise InterleavedDataError(
                    name,
                    column,
                    f"image {key!r} is referenced twice (first in {used[key]!r}); an image has one place in a trace.",
                    "reference each image once (copy the image into a new column for a second use), or skip the row.",
                )
            if key not in row or row[key] is None:
                raise InterleavedDataError(
                    name,
                    column,
                    f"the text references image {key!r}, but the row has no such image.",
                    f"add the image in column {key!r}, fix the reference, or skip the row.",
                )
            used[key] = column
            parts.append(_source_image_part(row[key], name, key))
            position = match.end()
        parts += _text_parts(text[position:])
        return parts

    prompt = interleave(question, "Question")
    completion = interleave(trace, "Text Reasoning Trace")
    unreferenced_problem = [
        key for key in sorted(row) if key.startswith("problem_image_") and row[key] is not None and key not in used
    ]
    prompt = [_source_image_part(row[key], name, key) for key in unreferenced_problem] + prompt
    unreferenced_reasoning = [
        key for key in sorted(row) if key.startswith("reasoning_image_") and row[key] is not None and key not in used
    ]
    if unreferenced_reasoning:
        logger.warning("Zebra-CoT row %s: unreferenced reasoning images %s left out.", name, unreferenced_reasoning)
    return {
        "id": f"zebra-cot-{name}",
        "prompt": prompt,
        "completion": completion,
        "answer": answer,
        "source": "zebra-cot",
    }


def _question_with_image(text: str, image: dict[str, Any] | None, row: Any, field: str) -> list[dict[str, Any]]:
    """Puts the image where the text has the `<image>` placeholder, else before the text."""
    count = text.count(IMAGE_PLACEHOLDER_TEXT)
    if image is None:
        if count:
            raise InterleavedDataError(
                row, field, "the text has an '<image>' placeholder but the row has no image.", "add the image."
            )
        return _text_parts(text)
    if count > 1:
        raise InterleavedDataError(
            row, field, f"the text has {count} '<image>' placeholders for one image.", "keep one placeholder."
        )
    if count == 1:
        before, after = text.split(IMAGE_PLACEHOLDER_TEXT)
        return [*_text_parts(before), image, *_text_parts(after)]
    return [image, *_text_parts(text)]


def _m3cot_choices(row: Mapping[str, Any], name: Any) -> list[str]:
    if "choices" not in row:
        _text(row, "choices", name, "list of options")  # raises naming the columns present
    choices = row["choices"]
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        found = f"one string ({choices!r:.40})" if isinstance(choices, str) else f"{type(choices).__name__}"
        raise InterleavedDataError(
            name,
            "choices",
            f"the options must be a list of strings, got {found}.",
            "store the options as a list (`['the square', 'the circle']`); a JSON string needs `json.loads`.",
        )
    if len(choices) < 2 or len(choices) > 26:
        raise InterleavedDataError(
            name,
            "choices",
            f"{len(choices)} options; a multiple-choice question needs 2 to 26.",
            "give the question's options, or drop the row (on_error='skip').",
        )
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            found = "empty" if isinstance(choice, str) else f"a {type(choice).__name__}"
            raise InterleavedDataError(
                name, f"choices[{i}]", f"option {i} is {found}, not a non-empty string.", "fix the option text."
            )
    return list(choices)


def m3cot_row_to_interleaved(row: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Converts one M3CoT row: image + context + question + lettered choices -> prompt; rationale -> completion.

    The prompt text reads `"{context}\\nQuestion: {question}\\nOptions:\\n(A) ...\\n(B) ..."` (context omitted when
    empty); the image comes first (or at an `<image>` placeholder in the question).

    Raises:
        InterleavedDataError: a missing column; a question, answer or rationale that is empty or not a string;
            options that are not a list of 2-26 non-empty strings; an answer that is not the letter of an option.
    """
    return question_row_to_interleaved(row, index, multiple_choice=True)


def question_row_to_interleaved(
    row: Mapping[str, Any], index: int | None = None, multiple_choice: bool = True, source: str = "m3cot"
) -> dict[str, Any]:
    """[`m3cot_row_to_interleaved`], also for free-form questions (`multiple_choice=False`: no `choices`, any
    non-empty answer string), as used by bootstrapping."""
    index = index if index is not None else "?"
    _check_row(row, index)
    row_id = row.get("id")
    name = row_label(index, row_id)
    question = _text(row, "question", name, "question")
    answer = _text(row, "answer", name, "answer").strip()
    lines = []
    if "context" in row:
        context = _text(row, "context", name, "context", required=False).strip()
        lines += [context] if context else []
    lines.append(f"Question: {question.strip()}")
    if multiple_choice:
        choices = _m3cot_choices(row, name)
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if answer not in letters:
            raise InterleavedDataError(
                name,
                "answer",
                f"the answer {answer!r} is not the letter of an option ({len(choices)} options: {letters[0]}-"
                f"{letters[-1]}).",
                "give the correct option's letter, or drop the row (on_error='skip').",
            )
        lines.append("Options:")
        lines += [f"({letter}) {choice}" for letter, choice in zip(letters, choices)]
    rationale = _text(row, "rationale", name, "rationale").strip()
    image = row.get("image")
    image = None if image is None else _source_image_part(image, name, "image")
    return {
        "id": str(row_id) if row_id is not None else f"{source}-{index}",
        "prompt": _question_with_image("\n".join(lines), image, name, "question"),
        "completion": _text_parts(rationale),
        "answer": answer,
        "source": source,
    }


def omni_bench_row_to_interleaved(row: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Converts one Omni-Bench row: base64 image + question -> prompt; no completion; `answer` kept.

    The image is kept as base64 (decoded and checked by `pretokenize_images`, which names the row when it fails).
    A row without a gold answer (no `answer` column, None or blank) gets `answer=None`: evaluation counts it and
    leaves it unscored; an answer that is not a string raises.
    """
    index = index if index is not None else "?"
    _check_row(row, index)
    row_id = row.get("id")
    name = row_label(index, row_id)
    question = _text(row, "question", name, "question")
    answer = _text(row, "answer", name, "answer", required=False) if "answer" in row else ""
    image = row.get("image")
    if image is None or (isinstance(image, str) and not image.strip()):
        raise InterleavedDataError(name, "image", "the row has no image.", "give the base64 image or drop the row.")
    part = _source_image_part(image, name, "image", strings="base64")
    return {
        "id": str(row_id) if row_id is not None else f"omni-bench-{index}",
        "prompt": _question_with_image(question, part, name, "question"),
        "completion": [],
        "answer": answer.strip() or None,
        "source": "omni-bench",
    }


def _convert(
    dataset: Any,
    row_fn: Callable[[Mapping[str, Any], int], dict[str, Any]],
    keep_columns: Sequence[str],
    on_error: str,
    num_proc: int | None,
    desc: str,
    dataset_format: str,
    skip_report: SkipReport | None,
):
    from datasets import Dataset, Image, Value

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    what = f"the {dataset_format} dataset"
    errors: list[tuple[int, str]] = []
    if isinstance(dataset, Dataset):
        check_not_empty(dataset, what)
        check_format_columns(dataset.column_names, dataset_format, what)
    else:
        rows = list(dataset)
        check_not_empty(rows, what)
        columns = dict.fromkeys(key for row in rows if isinstance(row, Mapping) for key in row)
        check_format_columns(columns, dataset_format, what)
        dataset, errors = rows_to_dataset(rows, what, row_fn, on_error)
    total = len(dataset) + len(errors)
    # Read source images as stored bytes: no decode / re-encode round trip during conversion.
    for column, feature in dataset.features.items():
        if isinstance(feature, Image) and feature.decode:
            dataset = dataset.cast_column(column, Image(decode=False))
    # A kept `source` column (Omni-Bench's own) replaces the converter's default source name.
    kept = [column for column in keep_columns if column in dataset.column_names and column != "id"]
    extra = {"source": Value("string"), **{column: dataset.features[column] for column in kept}}
    features = interleaved_features(**extra, **{_ERROR_COLUMN: Value("string")})

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        try:
            out = row_fn(row, index)
            out[_ERROR_COLUMN] = None
        except InterleavedDataError as error:
            if on_error == "raise":
                raise
            out = {"id": str(index), "prompt": [], "completion": [], "answer": None, "source": None}
            out[_ERROR_COLUMN] = str(error)
        out.update({column: row[column] for column in kept})
        return out

    converted = dataset.map(
        convert,
        with_indices=True,
        remove_columns=dataset.column_names,
        features=features,
        num_proc=num_proc,
        desc=desc,
    )
    errors += [(i, e) for i, e in enumerate(converted[_ERROR_COLUMN]) if e is not None]
    if errors:
        converted = converted.filter(lambda error: error is None, input_columns=_ERROR_COLUMN, num_proc=num_proc)
        if len(converted) == 0:
            raise DatasetFormatError(
                f"{desc}: every one of the {total} rows is bad and was skipped (on_error='skip'). First: "
                f"{errors[0][1]}"
            )
        (skip_report if skip_report is not None else SkipReport()).add(
            desc, len(errors), total, "on_error='skip'", [e for _, e in errors], [i for i, _ in errors]
        )
    return converted.remove_columns(_ERROR_COLUMN)


def convert_zebra_cot(
    dataset: Any, on_error: str = "raise", num_proc: int | None = None, skip_report: SkipReport | None = None
):
    """Converts a Zebra-CoT dataset (or list of rows) to the interleaved schema.

    Args:
        dataset: A `datasets.Dataset` (or list of dicts) in the Zebra-CoT schema.
        on_error: `"raise"` (default) or `"skip"` (bad rows dropped, counted and logged). Missing columns and an
            empty dataset raise a [`DatasetFormatError`] either way, as does a dataset whose every row is bad.
        num_proc: Processes for `datasets.map`.
        skip_report: A [`SkipReport`] that records the skipped rows (for the end-of-run summary).

    Returns:
        A `datasets.Dataset` with `id`, `prompt`, `completion`, `answer`, `source`.

    Example:
        ```python
        >>> from datasets import load_dataset
        >>> from trl_omni.data import convert_zebra_cot
        >>> train = convert_zebra_cot(load_dataset("multimodal-reasoning-lab/Zebra-CoT", split="train"))
        ```
    """
    return _convert(
        dataset, zebra_cot_row_to_interleaved, (), on_error, num_proc, "Converting Zebra-CoT", "zebra_cot", skip_report
    )


def convert_m3cot(
    dataset: Any, on_error: str = "raise", num_proc: int | None = None, skip_report: SkipReport | None = None
):
    """Converts an M3CoT dataset (or list of rows) to the interleaved schema; keeps `category, domain, topic, split,
    image_id`. See [`m3cot_row_to_interleaved`] for the prompt layout. Arguments as in [`convert_zebra_cot`]."""
    keep = ("category", "domain", "topic", "split", "image_id")
    return _convert(
        dataset, m3cot_row_to_interleaved, keep, on_error, num_proc, "Converting M3CoT", "m3cot", skip_report
    )


def convert_omni_bench(
    dataset: Any, on_error: str = "raise", num_proc: int | None = None, skip_report: SkipReport | None = None
):
    """Converts Omni-Bench (or a list of its rows) to the interleaved schema; every column other than `question`,
    `image` and `answer` (the source / dataset fields) is kept as is. Arguments as in [`convert_zebra_cot`]."""
    from datasets import Dataset

    if isinstance(dataset, Dataset):
        columns = dataset.column_names
    else:
        dataset = list(dataset)
        columns = list(dict.fromkeys(key for row in dataset if isinstance(row, Mapping) for key in row))
    keep = tuple(column for column in columns if column not in ("question", "image", "answer"))
    return _convert(
        dataset,
        omni_bench_row_to_interleaved,
        keep,
        on_error,
        num_proc,
        "Converting Omni-Bench",
        "omni_bench",
        skip_report,
    )
