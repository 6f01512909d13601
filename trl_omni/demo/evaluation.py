"""Uni-Skills through the library evaluation: the suite's drawing check, its [`~trl_omni.evaluation.EvalConfig`] and
a per-skill view of the results (used by `trl-omni demo` and `trl-omni ablate`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .uniskills import SKILLS, answer_from_drawing, row_question


def check_drawing(row: Mapping[str, Any], images: list[Any]) -> bool:
    """The Uni-Skills drawing check for `evaluate(drawing_check=...)`: the completion's first complete image shows
    the row's answer ([`answer_from_drawing`]: the zoom shows one object of the answer's colour, the line has that
    many yellow cells, that many cells are marked, the ball is in that row / column). No image: not correct.

    Args:
        row: A Uni-Skills row (`skill`, `prompt`, `answer`).
        images: The completion's complete images as `(H, W)` code grids, in order.
    """
    if not images:
        return False
    grid = images[0]
    drawn = answer_from_drawing(row["skill"], row_question(row), grid.reshape(-1).tolist(), tuple(grid.shape))
    return drawn == row["answer"]


def completion_budget(collator: Any, rows: list[dict]) -> int:
    """Tokens a completion needs: the longest reference completion of `rows` (text, images, answer, EOS) + 8."""
    batch = collator(rows)
    return int((batch["labels"] != -100).sum(dim=1).max()) + 8


def uniskills_eval_config(output_dir: str, max_new_tokens: int, batch_size: int = 64, **overrides: Any) -> Any:
    """The [`~trl_omni.evaluation.EvalConfig`] of a Uni-Skills evaluation.

    Greedy, constrained generation over prompts in the `plain` template (as the demo trains), at most one image per
    completion; rows are grouped by their `skill`; answers are matched exactly (`strict_answers`: a colour name
    similar to the answer is a wrong answer); no images saved, no trajectories in the evaluation's own report (the
    demo and the ablation render theirs), fresh predictions on every call (`overwrite`).

    Args:
        output_dir: Directory of the evaluation's files (`predictions.jsonl`, `metrics.json`, ...).
        max_new_tokens: Generation budget per completion (e.g. [`completion_budget`]).
        batch_size: Prompts per `generate` call.
        **overrides: Other `EvalConfig` fields.
    """
    from ..evaluation import EvalConfig

    settings = {
        "output_dir": output_dir,
        "overwrite": True,
        "template": "plain",
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "max_images": 1,
        "source_columns": ["skill"],
        "task_groups": {skill: [skill] for skill in SKILLS},
        "strict_answers": True,
        "save_images": False,
        "report_max_rows": 0,
        "progress": False,
        "print_table": False,
    }
    return EvalConfig(**{**settings, **overrides})


@dataclass
class UniSkillsEvaluation:
    """One model evaluated on Uni-Skills rows.

    Attributes:
        metrics: Skill (and `"all"`) -> `{"accuracy", "complete_image_rate", "drawing_accuracy", "n"}`.
        sequences: Per row, the prompt ids followed by the completion ids (ending with EOS when the model stopped).
        scores: Per row, `{"accuracy", "complete_image", "drawing_correct"}`.
        result: The library's [`~trl_omni.evaluation.EvalResult`] (full metrics, files).
    """

    metrics: dict[str, dict[str, float]]
    sequences: list[list[int]]
    scores: list[dict[str, float]]
    result: Any


def skill_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The per-skill view of an evaluation's metrics (groups are skills, `"all"` is overall)."""
    from ..evaluation import per_group

    return {
        name: {
            "accuracy": entry["accuracy"] or 0.0,
            "complete_image_rate": entry["complete_image_rate"],
            "drawing_accuracy": entry["drawing_accuracy"] or 0.0,
            "n": entry["num_rows"],
        }
        for name, entry in per_group(metrics).items()
    }


def evaluate_uniskills(
    model: Any,
    processor: Any,
    rows: list[dict[str, Any]],
    output_dir: str,
    max_new_tokens: int,
    batch_size: int = 64,
    **config_overrides: Any,
) -> UniSkillsEvaluation:
    """Evaluates `model` on Uni-Skills `rows` with [`~trl_omni.evaluation.evaluate`] and [`check_drawing`].

    Args:
        model: The policy (a Chameleon with the demo palette codebook, e.g. from [`demo_model`]).
        processor: Its processor.
        rows: Uni-Skills rows (`make_uniskills`).
        output_dir: Directory of the evaluation's files.
        max_new_tokens: Generation budget per completion.
        batch_size: Prompts per `generate` call.
        **config_overrides: Other `EvalConfig` fields (see [`uniskills_eval_config`]).

    Example:
        ```python
        >>> evaluation = evaluate_uniskills(model, processor, test_rows, "eval-pesft", max_new_tokens=80)
        >>> evaluation.metrics["all"]["drawing_accuracy"]
        0.354
        ```
    """
    from ..evaluation import evaluate, read_predictions

    config = uniskills_eval_config(output_dir, max_new_tokens, batch_size, **config_overrides)
    result = evaluate(model, processor, rows, config, dataset_format="interleaved", drawing_check=check_drawing)
    records = read_predictions(result.predictions_path)
    tokenizer = getattr(processor, "tokenizer", processor)
    sequences = []
    for record in records:
        completion = record["completion_ids"]
        # The evaluation stores completions cut before EOS: one shorter than the budget stopped at its EOS.
        stopped = len(completion) < config.max_new_tokens
        sequences.append(record["prompt_ids"] + completion + ([tokenizer.eos_token_id] if stopped else []))
    scores = [
        {
            "accuracy": float(record["score"] or 0.0),
            "complete_image": float(record["num_images"] > 0),
            "drawing_correct": float(record["drawing_score"] or 0.0),
        }
        for record in records
    ]
    return UniSkillsEvaluation(
        metrics=skill_metrics(result.metrics), sequences=sequences, scores=scores, result=result
    )
