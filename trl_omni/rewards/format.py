"""Format reward: the templated control-tag style or the authors' "THOUGHT ... Final Answer:" style."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._common import DEFAULT_TAGS, OutputTags, text_reward


FORMAT_STYLES = ("tags", "thought")


def format_score(text: str, style: str = "tags", tags: OutputTags = DEFAULT_TAGS) -> float:
    """Scores the format of one completion text (1.0 or 0.0).

    - `"tags"`: the reasoning-open, reasoning-close, answer-open and answer-close tags occur in that order (first
      occurrence of each, anything may precede the reasoning, e.g. a lead phrase) and the answer between the answer
      tags is not empty (whitespace does not count).
    - `"thought"` (the authors' released rule): the text contains both the thought marker (`THOUGHT`) and the
      final-answer marker (`Final Answer:`).

    Example:
        ```python
        >>> format_score("THOUGHT 0: look. Final Answer: B", style="thought")
        1.0
        ```
    """
    if style == "thought":
        return float(tags.thought_marker in text and tags.final_answer_marker in text)
    if style != "tags":
        raise ValueError(f"style must be one of {FORMAT_STYLES}, got {style!r}.")
    position = 0
    spans = []
    for tag in tags.control_tags:
        found = text.find(tag, position)
        if found < 0:
            return 0.0
        spans.append(found)
        position = found + len(tag)
    answer = text[spans[2] + len(tags.answer_open) : spans[3]]
    return float(bool(answer.strip()))


def make_format_reward(
    style: str = "tags",
    processing_class: Any | None = None,
    image_vocabulary: Any | None = None,
    tags: OutputTags | None = None,
    name: str | None = None,
) -> Callable[..., list[float | None]]:
    """Builds a format reward following TRL's reward contract (rule: [`format_score`]).

    TRL decodes `completions` with `skip_special_tokens=True`; the Anole control tags are special tokens, so for
    the `"tags"` style pass `processing_class` (tokenizer or processor): the tags are then read from
    `completion_ids` by id. Without it, tags are looked for in the text (this works when the tags are ordinary
    text, or when the trainer decodes with special tokens kept); a warning is logged once when no completion of a
    batch holds any tag. A `processing_class` keyword passed at call time works too.

    Args:
        style: `"tags"` or `"thought"`.
        processing_class: Tokenizer (or processor) used to recover special-token tags from `completion_ids`.
        image_vocabulary: Optional [`~trl_omni.ImageVocabulary`]; image tokens are dropped before decoding.
        tags: The [`~trl_omni.rewards.OutputTags`] that structure a completion (None: the authors' defaults).
        name: The reward's name; `"format_reward"` for tags, `"format_thought_reward"` for thought by default.

    Returns:
        `reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]`.

    Example:
        ```python
        >>> reward = make_format_reward(style="thought")
        >>> reward(prompts=["Q"], completions=["THOUGHT 0: ... Final Answer: B", "B"])
        [1.0, 0.0]
        ```
    """
    if style not in FORMAT_STYLES:
        raise ValueError(f"style must be one of {FORMAT_STYLES}, got {style!r}.")
    tags = OutputTags.resolve(tags, "make_format_reward")
    use_ids = style == "tags"
    return text_reward(
        lambda texts, _: [format_score(text, style, tags) for text in texts],
        name or ("format_reward" if style == "tags" else "format_thought_reward"),
        f"Format reward (style {style!r}); see make_format_reward.",
        tags,
        processing_class,
        image_vocabulary,
        read_tags=use_ids,
        warn_as="format_reward" if use_ids else None,
    )


format_reward = make_format_reward(style="tags")
format_reward.__doc__ = """Format reward, style "tags" (see [`make_format_reward`] and [`format_score`]).

1.0 when the reasoning and answer control tags occur in order with a non-empty answer, else 0.0. The Anole tags
are special tokens that TRL's decoding removes: pass a `processing_class` keyword at call time or use
`make_format_reward(processing_class=tokenizer)`.
"""

format_thought_reward = make_format_reward(style="thought")
