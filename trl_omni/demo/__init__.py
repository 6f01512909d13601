"""The embedded demo: the procedurally generated Uni-Skills suite and a tiny palette-codebook Chameleon."""

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
    "answer_from_drawing",
    "demo_decoder",
    "demo_model",
    "demo_palette",
    "make_uniskills",
    "row_images",
    "row_question",
    "solve_problem",
]
