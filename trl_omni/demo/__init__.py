"""The embedded demo: the procedurally generated Uni-Skills suite, a tiny palette-codebook Chameleon, and the suite's
evaluation through `trl_omni.evaluation` (its drawing check and per-skill view)."""

from .evaluation import (
    UniSkillsEvaluation,
    check_drawing,
    completion_budget,
    evaluate_uniskills,
    skill_metrics,
    uniskills_eval_config,
)
from .uniskills import (
    COLOR_NAMES,
    DEMO_PALETTE,
    SKILLS,
    answer_from_drawing,
    demo_decoder,
    demo_model,
    demo_palette,
    make_uniskills,
    row_images,
    row_question,
    solve_problem,
)


__all__ = [
    "COLOR_NAMES",
    "DEMO_PALETTE",
    "SKILLS",
    "UniSkillsEvaluation",
    "answer_from_drawing",
    "check_drawing",
    "completion_budget",
    "demo_decoder",
    "demo_model",
    "demo_palette",
    "evaluate_uniskills",
    "make_uniskills",
    "row_images",
    "row_question",
    "skill_metrics",
    "solve_problem",
    "uniskills_eval_config",
]
