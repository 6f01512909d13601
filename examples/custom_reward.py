"""A contributed reward, as a user would write one: plain function, TRL's reward contract.

Use it by dotted path (`--reward_funcs examples.custom_reward:draws_when_asked`, from the repository root) or
register it in your package's `pyproject.toml` / `setup.py` under the `trl_omni.rewards` entry-point group to name it
like a built-in. See docs/contributing-rewards.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


_ASKS_FOR_A_DRAWING = re.compile(r"\b(draw|sketch|zoom|mark|highlight|predict the next)\b", re.IGNORECASE)


def draws_when_asked(
    prompts: Sequence[str],
    completions: Sequence[str],
    image_segments: Sequence[Sequence[Any]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when a prompt asks for a drawing and the completion holds at least one complete image, 0.0 when it asks
    and none is complete, None (no opinion, excluded from the sum for that sample) when the prompt does not ask.

    Args:
        prompts: Prompt texts (images removed).
        completions: Completion texts (images removed).
        image_segments: Per completion, the parsed image segments (`ImageSegment`), passed by `PeRPOTrainer`.

    Example:
        ```python
        >>> draws_when_asked(["Draw the grid."], ["..."], image_segments=[[]])
        [0.0]
        ```
    """
    if image_segments is None:
        raise ValueError("draws_when_asked needs `image_segments`: use it with PeRPOTrainer (trl-omni rl).")
    scores: list[float | None] = []
    for prompt, segments in zip(prompts, image_segments, strict=True):
        if not _ASKS_FOR_A_DRAWING.search(prompt if isinstance(prompt, str) else str(prompt)):
            scores.append(None)
        else:
            scores.append(1.0 if any(segment.complete for segment in segments) else 0.0)
    return scores
