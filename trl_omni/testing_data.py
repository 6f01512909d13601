"""Deterministic fixture rows, built in code (no downloads), for tests, examples and benchmarks.

The public-dataset builders return rows in exactly the published column layouts, so converters are tested against
the real schemas:

- [`zebra_cot_rows`]: Zebra-CoT (`Question`, `Text Reasoning Trace`, `Final Answer`, `problem_image_k`,
  `reasoning_image_k`; images referenced as `<image_start>[key]<image_end>`, steps as `THOUGHT k:`).
- [`m3cot_rows`]: M3CoT (`id, category, image_id, question, choices, context, answer, rationale, split, image,
  domain, topic`).
- [`omni_bench_rows`]: Omni-Bench (`question`, base64 `image`, `answer`, plus `source` / `dataset` fields).
- [`interleaved_rows`]: rows already in the trl-omni schema with pre-tokenized codes (collator tests, benchmarks).
"""

from __future__ import annotations

import base64
import io
import random
from typing import Any

import numpy as np


def make_image(size: tuple[int, int] = (32, 32), mode: str = "RGB", seed: int = 0) -> Any:
    """A seeded random PIL image of `size` (width, height) in `mode` (RGB, L, RGBA, P, I;16, ...)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L")
        image = image.copy()
        image.putalpha(alpha)
        return image
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    return image.convert(mode)


def image_to_bytes(image: Any, format: str = "PNG") -> bytes:
    """Encodes a PIL image as a file's bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def image_to_base64(image: Any, format: str = "PNG") -> str:
    """Encodes a PIL image as base64 text (the Omni-Bench storage)."""
    return base64.b64encode(image_to_bytes(image, format)).decode("ascii")


def _ref(key: str) -> str:
    return f"<image_start>[{key}]<image_end>"


def zebra_cot_rows(
    num_rows: int = 2,
    num_problem_images: int = 1,
    num_reasoning_images: int = 2,
    image_columns: int = 4,
    image_size: tuple[int, int] = (32, 32),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows in the Zebra-CoT schema: every image column up to `image_columns` exists (None when unused).

    The question references its problem images and the trace references each reasoning image once, in order, as the
    public dataset does.
    """
    rows = []
    for r in range(num_rows):
        row: dict[str, Any] = {}
        question = f"Which cell of the grid is coloured {['red', 'blue', 'green'][r % 3]}? "
        question += " ".join(_ref(f"problem_image_{k + 1}") for k in range(num_problem_images))
        trace = []
        for step in range(num_reasoning_images + 1):
            text = f"THOUGHT {step}: I mark the object in step {step}."
            if step < num_reasoning_images:
                text += " " + _ref(f"reasoning_image_{step + 1}")
            trace.append(text)
        row["Question"] = question
        row["Text Reasoning Trace"] = "\n".join(trace)
        row["Final Answer"] = "ABCD"[r % 4]
        for k in range(image_columns):
            row[f"problem_image_{k + 1}"] = (
                make_image(image_size, seed=seed + 100 * r + k) if k < num_problem_images else None
            )
        for k in range(image_columns):
            row[f"reasoning_image_{k + 1}"] = (
                make_image(image_size, seed=seed + 100 * r + 50 + k) if k < num_reasoning_images else None
            )
        rows.append(row)
    return rows


def m3cot_rows(num_rows: int = 2, image_size: tuple[int, int] = (32, 32), seed: int = 0) -> list[dict[str, Any]]:
    """Rows in the M3CoT schema (text-only rationale, one image per question)."""
    rows = []
    for r in range(num_rows):
        rows.append(
            {
                "id": f"physical-commonsense-{1000 + r}",
                "category": "physical-commonsense",
                "image_id": f"physical-commonsense-{1000 + r}",
                "question": f"Which object is on the {['left', 'right'][r % 2]}?",
                "choices": ["the square", "the circle", "the triangle"],
                "context": "The image shows three shapes in a row." if r % 2 == 0 else "",
                "answer": "ABC"[r % 3],
                "rationale": "First I look at the row. Then I find the leftmost shape. It is the square.",
                "split": "train",
                "image": make_image(image_size, seed=seed + r),
                "domain": "commonsense",
                "topic": "physical-commonsense",
            }
        )
    return rows


def omni_bench_rows(num_rows: int = 2, image_size: tuple[int, int] = (32, 32), seed: int = 0) -> list[dict[str, Any]]:
    """Rows in the Omni-Bench schema (`question`, base64 `image`, `answer`, source / dataset fields)."""
    sources = [("natural_scene", "vstar"), ("structured_image", "chartqa"), ("diagram_math", "geometry3k")]
    rows = []
    for r in range(num_rows):
        source, dataset = sources[r % len(sources)]
        rows.append(
            {
                "question": f"What is the value of the bar {r + 1}?",
                "image": image_to_base64(make_image(image_size, seed=seed + r)),
                "answer": str(10 * (r + 1)),
                "source": source,
                "dataset": dataset,
            }
        )
    return rows


def interleaved_rows(
    image_vocabulary: Any,
    num_rows: int = 4,
    prompt_images: int | tuple[int, int] = (0, 1),
    completion_images: int | tuple[int, int] = (0, 2),
    text_words: tuple[int, int] = (3, 30),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows in the trl-omni schema with random pre-tokenized images (codes drawn from the vocabulary's range).

    Counts given as `(low, high)` are drawn uniformly per row (inclusive), so lengths are mixed.
    """
    from .data.schema import image_part, text_part

    rng = random.Random(seed)
    words = "the a grid cell red blue square circle line mark zoom left right top bottom count value".split()

    def count(spec: int | tuple[int, int]) -> int:
        return spec if isinstance(spec, int) else rng.randint(*spec)

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(*text_words)))

    def image() -> dict[str, Any]:
        return image_part(
            codes=[rng.randrange(image_vocabulary.num_codes) for _ in range(image_vocabulary.tokens_per_image)]
        )

    rows = []
    for r in range(num_rows):
        prompt = [text_part(text())] + [image() for _ in range(count(prompt_images))]
        completion = []
        for _ in range(count(completion_images)):
            completion += [text_part(text()), image()]
        completion.append(text_part(text()))
        rows.append({"id": f"row-{r}", "prompt": prompt, "completion": completion, "answer": rng.choice("ABCD")})
    return rows
