"""Uni-Skills: a procedurally generated suite of "reason by drawing" tasks over a small palette of colours.

Each skill of the Omni-R1 method's taxonomy gets one task family. Images are code grids whose codes *are* colours
(the demo model's VQ codebook is [`~trl_omni.palette_codebook`] of [`DEMO_PALETTE`]), so every drawing renders
exactly with [`~trl_omni.PaletteDecoder`] and the perception reward's 2D total variation measures real colour edges.

| skill      | problem image                                  | functional image drawn in the completion     | answer  |
|------------|------------------------------------------------|----------------------------------------------|---------|
| `zoom`     | objects scattered over the four quadrants      | the asked quadrant, magnified 2x             | colour  |
| `line`     | two white dots on one row or column            | the grid with the yellow line between them   | a count |
| `mark`     | coloured cells                                 | the grid with every cell of the asked colour marked white | a count |
| `predict`  | a red ball and its magenta trail               | the state after the asked number of steps   | row / column |

Rows follow the interleaved schema (docs/data-formats.md): `prompt` = [problem image, question],
`completion` = [text, functional image, text stating the answer], plus `answer`, `id`, `skill` and
`reference_images` (the functional image again, as the reference drawing of `ReferenceImageReward`). Generation is
seeded and deterministic; the test split is drawn first from each skill's stream and training rows that repeat a
test problem are skipped, so the splits are disjoint and the test split does not depend on `num_train`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.schema import image_part, text_part
from ..models.vq_decoder import PaletteDecoder, palette_codebook, uniform_palette


SKILLS = ("zoom", "line", "mark", "predict")

# The eight corners of the RGB cube, in `uniform_palette(8)` order: code k is colour COLOR_NAMES[k].
DEMO_PALETTE = uniform_palette(8)
_NAMES_BY_RGB = {
    (0, 0, 0): "black",
    (0, 0, 255): "blue",
    (0, 255, 0): "green",
    (0, 255, 255): "cyan",
    (255, 0, 0): "red",
    (255, 0, 255): "magenta",
    (255, 255, 0): "yellow",
    (255, 255, 255): "white",
}
COLOR_NAMES = tuple(_NAMES_BY_RGB[tuple(int(v) for v in rgb)] for rgb in DEMO_PALETTE)
_CODE = {name: code for code, name in enumerate(COLOR_NAMES)}
BACKGROUND, WHITE, YELLOW, RED, MAGENTA = (
    _CODE["black"],
    _CODE["white"],
    _CODE["yellow"],
    _CODE["red"],
    _CODE["magenta"],
)
# Colours an object may have (background and the marker / line colours are reserved).
_OBJECT_COLORS = tuple(_CODE[name] for name in ("blue", "green", "cyan", "red", "magenta"))

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
_DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def demo_palette() -> np.ndarray:
    """The demo's `(8, 3)` uint8 palette: code `k` has colour `COLOR_NAMES[k]`."""
    return DEMO_PALETTE.copy()


def demo_decoder(grid_size: tuple[int, int] | None = None, patch_size: int = 8) -> PaletteDecoder:
    """An exact [`~trl_omni.PaletteDecoder`] for Uni-Skills images (`patch_size` pixels per code)."""
    return PaletteDecoder(DEMO_PALETTE, patch_size=patch_size, grid_size=grid_size)


def demo_model(
    seed: int = 0,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    image_size: int = 32,
    save_dir: str | None = None,
) -> tuple[Any, Any]:
    """A tiny Chameleon whose VQ codebook is the demo palette, so image codes *are* colours.

    Built by [`~trl_omni.testing.tiny_chameleon`] with one image token per palette colour; the codebook is replaced
    by [`~trl_omni.palette_codebook`] of [`DEMO_PALETTE`] before anything reads it, so
    `ImageVocabulary.from_model(model, processor)` sees the colour codebook as usual.

    Args:
        seed: Seed for the weights and the (shuffled) image-token ids.
        hidden_size: Transformer width.
        num_hidden_layers: Transformer depth.
        num_attention_heads: Attention heads (must divide `hidden_size`).
        image_size: Image side in pixels; the code grid side is `image_size // 4`.
        save_dir: When set, the model (with the palette codebook) and processor are saved there.

    Returns:
        `(model, processor)`.

    Example:
        ```python
        >>> from trl_omni import ImageVocabulary
        >>> from trl_omni.demo import demo_model
        >>> model, processor = demo_model(seed=0)
        >>> ImageVocabulary.from_model(model, processor).num_codes
        8
        ```
    """
    import torch

    from ..testing import tiny_chameleon

    model, processor = tiny_chameleon(
        seed=seed,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        image_size=image_size,
        num_codes=len(DEMO_PALETTE),
    )
    embedding = model.model.vqmodel.quantize.embedding.weight
    with torch.no_grad():
        embedding.copy_(palette_codebook(DEMO_PALETTE, dim=embedding.shape[1]).to(embedding.dtype))
    if save_dir is not None:
        model.save_pretrained(save_dir)
        processor.save_pretrained(save_dir)
    return model, processor


# ----------------------------------------------------------------------------------------------------- generators
def _check_grid(grid_size: Sequence[int]) -> tuple[int, int]:
    height, width = (int(v) for v in grid_size)
    if height < 6 or width < 6 or height % 2 or width % 2:
        raise ValueError(
            f"Uni-Skills needs an even code grid of at least 6x6 (quadrants, lines); got {height}x{width}."
        )
    return height, width


def _check_names(names: Sequence[str], known: Sequence[str], what: str) -> None:
    """Raises naming the unknown `names` (or an empty selection) and the `known` choices."""
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"Unknown {what} {unknown or list(names)}; choose from {list(known)}.")


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((height, width), BACKGROUND, dtype=np.int64)


def _quadrant_slices(index: int, height: int, width: int) -> tuple[slice, slice]:
    half_h, half_w = height // 2, width // 2
    top, left = (index // 2) * half_h, (index % 2) * half_w
    return slice(top, top + half_h), slice(left, left + half_w)


def _zoom(rng: random.Random, height: int, width: int) -> tuple[np.ndarray, str, np.ndarray, str, str, str]:
    grid = _blank(height, width)
    target = rng.randrange(4)
    colors = rng.sample(_OBJECT_COLORS, 4)
    others = rng.sample([q for q in range(4) if q != target], rng.randint(1, 3))
    for quadrant, color in zip([target, *others], colors):
        rows, cols = _quadrant_slices(quadrant, height, width)
        grid[rng.randrange(rows.start, rows.stop), rng.randrange(cols.start, cols.stop)] = color
    rows, cols = _quadrant_slices(target, height, width)
    drawing = grid[rows, cols].repeat(2, axis=0).repeat(2, axis=1)
    name = COLOR_NAMES[colors[0]]
    question = f"Zoom in on the {QUADRANTS[target]} quadrant. What colour is the object there?"
    return grid, question, drawing, "I zoom in.", f"The object is {name}.", name


def _line(rng: random.Random, height: int, width: int) -> tuple[np.ndarray, str, np.ndarray, str, str, str]:
    grid = _blank(height, width)
    horizontal = rng.random() < 0.5
    length = width if horizontal else height
    first = rng.randrange(0, length - 2)
    second = rng.randrange(first + 2, length)
    fixed = rng.randrange(height if horizontal else width)
    cells = [(fixed, i) if horizontal else (i, fixed) for i in range(first, second + 1)]
    grid[cells[0]] = grid[cells[-1]] = WHITE
    free = [(r, c) for r in range(height) for c in range(width) if (r, c) not in cells]
    for cell in rng.sample(free, rng.randint(0, 3)):
        grid[cell] = rng.choice(_OBJECT_COLORS)
    drawing = grid.copy()
    for cell in cells[1:-1]:
        drawing[cell] = YELLOW
    between = len(cells) - 2
    question = "Draw a line between the white dots. How many cells lie between them?"
    return grid, question, drawing, "I draw a line.", f"It covers {between}.", str(between)


def _mark(rng: random.Random, height: int, width: int) -> tuple[np.ndarray, str, np.ndarray, str, str, str]:
    grid = _blank(height, width)
    target, *distractors = rng.sample(_OBJECT_COLORS, 3)
    count = rng.randint(1, 5)
    cells = rng.sample([(r, c) for r in range(height) for c in range(width)], count + rng.randint(1, 4))
    for cell in cells[:count]:
        grid[cell] = target
    for cell in cells[count:]:
        grid[cell] = rng.choice(distractors)
    drawing = np.where(grid == target, WHITE, grid)
    name = COLOR_NAMES[target]
    question = f"Mark every {name} cell. How many are there?"
    return grid, question, drawing, f"I mark each {name} cell.", f"There are {count}.", str(count)


def _predict(rng: random.Random, height: int, width: int) -> tuple[np.ndarray, str, np.ndarray, str, str, str]:
    direction = rng.choice(sorted(_DIRECTIONS))
    dr, dc = _DIRECTIONS[direction]
    steps = rng.randint(1, 3)
    # The trail and the ball after `steps` steps both lie inside the grid.
    rows = [r for r in range(height) if 0 <= r - dr < height and 0 <= r + steps * dr < height]
    cols = [c for c in range(width) if 0 <= c - dc < width and 0 <= c + steps * dc < width]
    row, col = rng.choice(rows), rng.choice(cols)
    grid = _blank(height, width)
    grid[row - dr, col - dc] = MAGENTA
    grid[row, col] = RED
    drawing = _blank(height, width)
    new_row, new_col = row + steps * dr, col + steps * dc
    drawing[new_row - dr, new_col - dc] = MAGENTA
    drawing[new_row, new_col] = RED
    axis, value = ("row", new_row + 1) if dr else ("column", new_col + 1)
    plural = "step" if steps == 1 else "steps"
    question = f"The red ball moves away from its trail. Which {axis} is it in after {steps} {plural}?"
    return grid, question, drawing, "I predict the next state.", f"It is in {axis} {value}.", str(value)


_GENERATORS = {"zoom": _zoom, "line": _line, "mark": _mark, "predict": _predict}


def _row(skill: str, split: str, index: int, example: tuple) -> dict[str, Any]:
    grid, question, drawing, lead, statement, answer = example
    # The authors' Zebra-CoT layout: numbered thoughts around the drawing, then "Final Answer:" (added by the
    # collator's template), which the "thought" format reward checks.
    return {
        "id": f"uniskills-{split}-{skill}-{index}",
        "skill": skill,
        "prompt": [image_part(codes=grid.reshape(-1).tolist()), text_part(question)],
        "completion": [
            text_part(f"THOUGHT 0: {lead}"),
            image_part(codes=drawing.reshape(-1).tolist()),
            text_part(f"THOUGHT 1: {statement}"),
        ],
        "answer": answer,
        # The solver's drawing, for ReferenceImageReward (PeRPO rows keep it when they drop the completion).
        "reference_images": [image_part(codes=drawing.reshape(-1).tolist())],
    }


def _split_counts(total: int, skills: Sequence[str]) -> list[int]:
    return [total // len(skills) + (1 if i < total % len(skills) else 0) for i in range(len(skills))]


def make_uniskills(
    grid_size: Sequence[int],
    num_train: int = 256,
    num_test: int = 64,
    seed: int = 0,
    skills: Sequence[str] = SKILLS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Builds the Uni-Skills train and test rows (interleaved schema, codes over [`DEMO_PALETTE`]).

    Rows are spread evenly over `skills` and interleaved (`zoom, line, mark, predict, zoom, ...`). For each skill
    one seeded stream draws the test problems first, then the training problems, skipping any problem (image and
    question) already drawn: the splits are disjoint and equal seeds give identical rows.

    Args:
        grid_size: `(H, W)` code grid of the model (`ImageVocabulary.grid_size`); even sides of at least 6.
        num_train: Training rows in total.
        num_test: Test rows in total.
        seed: Seed of the problem streams.
        skills: Task families to include (a subset of [`SKILLS`]).

    Returns:
        `(train_rows, test_rows)`; each row has `id`, `skill`, `prompt`, `completion`, `answer` and
        `reference_images` (the completion's functional image, as a one-image list).

    Example:
        ```python
        >>> train, test = make_uniskills(vocab.grid_size, num_train=64, num_test=16, seed=0)
        >>> test[0]["skill"], test[0]["answer"]
        ('zoom', 'green')
        ```
    """
    height, width = _check_grid(grid_size)
    _check_names(skills, SKILLS, "Uni-Skills skills")
    if num_train < 0 or num_test < 0:
        raise ValueError(f"num_train and num_test must be >= 0; got {num_train} and {num_test}.")
    train_by_skill, test_by_skill = [], []
    for skill, n_train, n_test in zip(skills, _split_counts(num_train, skills), _split_counts(num_test, skills)):
        rng = random.Random(f"uniskills:{seed}:{skill}")
        seen: set = set()
        drawn: list[tuple] = []
        attempts = 0
        while len(drawn) < n_test + n_train:
            attempts += 1
            if attempts > 50 * (n_test + n_train) + 1000:
                raise ValueError(
                    f"Uni-Skills skill {skill!r} has too few distinct problems on a {height}x{width} grid for "
                    f"{n_test} test + {n_train} train rows; ask for fewer rows or use a larger grid."
                )
            example = _GENERATORS[skill](rng, height, width)
            key = (example[0].tobytes(), example[1])
            if key in seen:
                continue
            seen.add(key)
            drawn.append(example)
        test_by_skill.append([_row(skill, "test", i, ex) for i, ex in enumerate(drawn[:n_test])])
        train_by_skill.append([_row(skill, "train", i, ex) for i, ex in enumerate(drawn[n_test:])])

    def interleave(groups: list[list[dict]]) -> list[dict]:
        longest = max((len(group) for group in groups), default=0)
        return [group[i] for i in range(longest) for group in groups if i < len(group)]

    return interleave(train_by_skill), interleave(test_by_skill)


# -------------------------------------------------------------------------------------------------------- solvers
def _grid_of(codes: Any, grid_size: Sequence[int]) -> np.ndarray:
    height, width = (int(v) for v in grid_size)
    grid = np.asarray(codes, dtype=np.int64)
    if grid.size != height * width:
        raise ValueError(f"Expected {height * width} codes for a {height}x{width} grid, got {grid.size}.")
    return grid.reshape(height, width)


def solve_problem(skill: str, question: str, codes: Any, grid_size: Sequence[int]) -> str:
    """Answers a Uni-Skills question from its problem image alone (the codes), as a reference solver.

    Args:
        skill: One of [`SKILLS`].
        question: The question text.
        codes: The problem image's `H*W` codes.
        grid_size: `(H, W)`.

    Returns:
        The exact answer string.
    """
    grid = _grid_of(codes, grid_size)
    height, width = grid.shape
    if skill == "zoom":
        quadrant = next(q for q in QUADRANTS if f"the {q} quadrant" in question)
        rows, cols = _quadrant_slices(QUADRANTS.index(quadrant), height, width)
        objects = grid[rows, cols][grid[rows, cols] != BACKGROUND]
        if len(objects) != 1:
            raise ValueError(f"The {quadrant} quadrant holds {len(objects)} objects, not one.")
        return COLOR_NAMES[int(objects[0])]
    if skill == "line":
        dots = np.argwhere(grid == WHITE)
        if len(dots) != 2 or (dots[0] != dots[1]).sum() != 1:
            raise ValueError("Expected two white dots on one row or column.")
        return str(int(np.abs(dots[0] - dots[1]).sum()) - 1)
    if skill == "mark":
        name = re.search(r"Mark every (\w+) cell", question).group(1)
        return str(int((grid == _CODE[name]).sum()))
    if skill == "predict":
        match = re.search(r"Which (row|column) is it in after (\d+) step", question)
        axis, steps = match.group(1), int(match.group(2))
        (ball,), (trail,) = np.argwhere(grid == RED), np.argwhere(grid == MAGENTA)
        position = ball + steps * (ball - trail)
        return str(int(position[0 if axis == "row" else 1]) + 1)
    raise ValueError(f"Unknown skill {skill!r}; choose from {SKILLS}.")


def answer_from_drawing(skill: str, question: str, codes: Any, grid_size: Sequence[int]) -> str | None:
    """Reads the answer off a *drawn* functional image (the completion's image), or None if it does not show one.

    Used to check that reference drawings carry the answer, and to score whether a model's drawing is correct:
    the zoomed quadrant shows one object colour; the line image has yellow cells between the white dots; the
    marked image has white cells where the asked colour was; the predicted state has the ball at the answer.

    Args:
        skill: One of [`SKILLS`].
        question: The question text.
        codes: The drawn image's `H*W` codes.
        grid_size: `(H, W)`.
    """
    grid = _grid_of(codes, grid_size)
    if skill == "zoom":
        colors = set(grid[grid != BACKGROUND].tolist())
        return COLOR_NAMES[colors.pop()] if len(colors) == 1 else None
    if skill == "line":
        return str(int((grid == YELLOW).sum()))
    if skill == "mark":
        return str(int((grid == WHITE).sum()))
    if skill == "predict":
        balls = np.argwhere(grid == RED)
        if len(balls) != 1:
            return None
        axis = re.search(r"Which (row|column)", question).group(1)
        return str(int(balls[0][0 if axis == "row" else 1]) + 1)
    raise ValueError(f"Unknown skill {skill!r}; choose from {SKILLS}.")


def row_question(row: dict[str, Any]) -> str:
    """The question text of a Uni-Skills row (its prompt's text part)."""
    return " ".join(part["text"] for part in row["prompt"] if part.get("type") == "text" and part.get("text"))


def row_images(row: dict[str, Any], column: str) -> list[list[int]]:
    """The image codes of a row's `column` (`"prompt"` or `"completion"`), in order."""
    return [list(part["codes"]) for part in row[column] if part.get("type") == "image"]
