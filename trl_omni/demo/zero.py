"""Omni-R1-Zero on Uni-Skills: the generic drawing data of the base model and the suite's text-only chains of thought.

The Zero recipe starts from a base model that can draw but was never trained on the target reasoning (the paper
uses Anole), bootstraps text-only chains of thought into interleaved trajectories with it
([`~trl_omni.data.bootstrap.bootstrap_dataset`]), then trains on those. Here the base model is the demo model trained
on [`make_generic_drawing`] only: a random palette picture and a generic instruction (copy, mirror, turn upside down,
frame, paint the background), each a drawing operation that none of the Uni-Skills tasks (zoom-in, auxiliary line,
marking, visual prediction) uses, phrased in the bootstrap's drawing-prompt layout (so the base model understands
the prompts the bootstrap gives it, as Anole understands a drawing request). It never sees a Uni-Skills question, a
Uni-Skills functional image or a chain of thought. [`text_only_cot`] turns Uni-Skills rows into text-only chains of
thought (the reference completion's text, without its image) in the M3CoT columns the bootstrap reads.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.bootstrap import DEFAULT_PROMPT_TEMPLATE
from ..data.schema import image_part, text_part
from .uniskills import BACKGROUND, COLOR_NAMES, _check_grid, _check_names, row_images, row_question


GENERIC_TASKS = ("copy", "mirror", "upside_down", "frame", "background")
_PAINTS = tuple(code for code in range(len(COLOR_NAMES)) if code != BACKGROUND)
_CAPTIONS = ("Here is a picture.", "Look at this picture.", "A picture.", "Consider the picture.")


def _random_picture(rng: random.Random, height: int, width: int) -> np.ndarray:
    grid = np.full((height, width), BACKGROUND, dtype=np.int64)
    for cell in rng.sample(range(height * width), rng.randint(2, 8)):
        grid.flat[cell] = rng.choice(_PAINTS)
    return grid


def _generic_example(task: str, rng: random.Random, height: int, width: int) -> tuple[np.ndarray, str, np.ndarray]:
    picture = _random_picture(rng, height, width)
    paint = rng.choice(_PAINTS)
    if task == "copy":
        return picture, "Copy the picture.", picture.copy()
    if task == "mirror":
        return picture, "Mirror the picture from left to right.", picture[:, ::-1].copy()
    if task == "upside_down":
        return picture, "Turn the picture upside down.", picture[::-1, :].copy()
    if task == "frame":
        drawing = picture.copy()
        drawing[0, :] = drawing[-1, :] = drawing[:, 0] = drawing[:, -1] = paint
        return picture, f"Draw a {COLOR_NAMES[paint]} frame around the picture.", drawing
    if task == "background":
        return picture, f"Paint the background {COLOR_NAMES[paint]}.", np.where(picture == BACKGROUND, paint, picture)
    raise ValueError(f"Unknown generic drawing task {task!r}; choose from {GENERIC_TASKS}.")


def make_generic_drawing(
    grid_size: Sequence[int],
    num_rows: int,
    seed: int = 0,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    tasks: Sequence[str] = GENERIC_TASKS,
) -> list[dict[str, Any]]:
    """Generic drawing rows for the Zero base model: a random palette picture, a generic instruction, the drawing.

    Each row's prompt is the picture followed by `prompt_template` filled as a one-step drawing request (a generic
    caption as the question, the instruction as the step), the same layout [`~trl_omni.data.bootstrap.StepDrawer`]
    builds from a chain of thought; its completion is the drawn image alone (no answer). Tasks cycle through
    [`GENERIC_TASKS`]; none of them is a Uni-Skills operation.

    Args:
        grid_size: `(H, W)` code grid of the model (even sides of at least 6, as for Uni-Skills).
        num_rows: Rows to make.
        seed: Seed of the pictures, instructions and colours.
        prompt_template: The bootstrap's drawing prompt (`BootstrapConfig.prompt_template`).
        tasks: The generic tasks to cycle through (a subset of [`GENERIC_TASKS`]).

    Returns:
        Rows with `id`, `task`, `prompt`, `completion` and `answer` (None) in the interleaved schema, codes over
        the demo palette.

    Example:
        ```python
        >>> rows = make_generic_drawing(vocab.grid_size, 8, seed=0)
        >>> rows[0]["task"], rows[0]["prompt"][1]["text"].splitlines()[1]
        ('copy', 'Reasoning step 1 of 1: Copy the picture.')
        ```
    """
    height, width = _check_grid(grid_size)
    _check_names(tasks, GENERIC_TASKS, "generic drawing tasks")
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}.")
    rng = random.Random(f"generic-drawing:{seed}")
    before_image, _, after_image = prompt_template.partition("{image}")
    if before_image.strip():
        raise ValueError("make_generic_drawing expects a prompt_template that starts with {image}.")
    rows = []
    for index in range(num_rows):
        task = tasks[index % len(tasks)]
        picture, instruction, drawing = _generic_example(task, rng, height, width)
        request = after_image.format(
            question=rng.choice(_CAPTIONS), step=1, num_steps=1, step_text=instruction, previous_steps=""
        )
        rows.append(
            {
                "id": f"generic-{task}-{index}",
                "task": task,
                "prompt": [image_part(codes=picture.reshape(-1).tolist()), text_part(request)],
                "completion": [image_part(codes=drawing.reshape(-1).tolist())],
                "answer": None,  # a drawing request: nothing to answer
            }
        )
    return rows


def text_only_cot(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text-only chains of thought of Uni-Skills rows, in the M3CoT columns that the bootstrap reads.

    The rationale is the text of the reference completion with its functional image left out (for example
    `"THOUGHT 0: I zoom in. THOUGHT 1: The object is green."`); the problem image is passed as its codes.

    Args:
        rows: Uni-Skills rows ([`make_uniskills`]).

    Returns:
        Rows with `id`, `question`, `image` (`{"codes": [...]}`), `answer`, `rationale` and `skill`.
    """
    out = []
    for row in rows:
        (problem,) = row_images(row, "prompt")
        texts = [part["text"].strip() for part in row["completion"] if part.get("type") == "text"]
        out.append(
            {
                "id": row["id"],
                "question": row_question(row),
                "image": {"codes": problem},
                "answer": row["answer"],
                "rationale": " ".join(text for text in texts if text),
                "skill": row["skill"],
            }
        )
    return out


def check_generic_drawing(row: dict[str, Any], images: list[Any]) -> float:
    """Drawing check of [`make_generic_drawing`] rows for `evaluate(drawing_check=...)`: of the cells that are not
    background in the reference or in the first complete image, the fraction drawn as in the reference (1.0: the
    drawing is exact; a blank image scores 0 on a copy request, where counting every cell would give it ~85%).
    No image scores 0."""
    (reference,) = row_images(row, "completion")
    if not images:
        return 0.0
    pairs = [
        (drawn, wanted)
        for drawn, wanted in zip(images[0].reshape(-1).tolist(), reference)
        if drawn != BACKGROUND or wanted != BACKGROUND
    ]
    return sum(drawn == wanted for drawn, wanted in pairs) / len(pairs) if pairs else 1.0
