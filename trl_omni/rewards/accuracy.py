"""Accuracy reward: answer extraction and the rule cascade (`rules="default"` or the authors' `rules="omni_r1"`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from ._common import DEFAULT_TAGS, OutputTags, check_real, text_reward
from .rules_default import default_answer_score, has_math_signs, parse_choice, parse_formula, parse_number, similarity
from .rules_omni_r1 import OmniR1Thresholds, omni_r1_answer_score


__all__ = [
    "ACCURACY_RULES",
    "OmniR1Thresholds",
    "accuracy_reward",
    "answer_score",
    "extract_answer",
    "has_math_signs",
    "make_accuracy_reward",
    "parse_choice",
    "parse_formula",
    "parse_number",
    "similarity",
]


ANSWER_STYLES = ("auto", "tags", "thought")


# ----------------------------------------------------------------------------------------------- answer extraction
def extract_answer(text: str, tags: OutputTags = DEFAULT_TAGS, style: str = "auto") -> str:
    """Extracts the final answer from a completion text.

    Args:
        text: The completion text (control tags present, see the `processing_class` argument of the rewards).
        tags: The output-format strings.
        style: `"tags"`: the text between the answer tags (to the end of the text when the closing tag is
            missing); `"thought"`: the text after the first final-answer marker; `"auto"`: tags when the answer
            opening tag is present, else the final-answer marker.

    Returns:
        The stripped answer, or `""` when the completion holds none.

    Example:
        ```python
        >>> extract_answer("THOUGHT 0: add. Final Answer: 42")
        '42'
        >>> extract_answer("<reserved12856>...<reserved12857><reserved12866> B <reserved12867>")
        'B'
        ```
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"style must be one of {ANSWER_STYLES}, got {style!r}.")
    if style in ("auto", "tags") and tags.answer_open in text:
        inner = text.split(tags.answer_open, 1)[1]
        return inner.split(tags.answer_close, 1)[0].strip()
    if style in ("auto", "thought") and tags.final_answer_marker in text:
        inner = text.split(tags.final_answer_marker, 1)[1]
        return inner.split(tags.answer_open, 1)[0].split(tags.answer_close, 1)[0].strip()
    return ""


# ----------------------------------------------------------------------------------------------- the rules
ACCURACY_RULES = ("default", "omni_r1")


def answer_score(
    prediction: str,
    ground_truth: str,
    rules: str = "default",
    similarity_threshold: float | None = None,
    strict: bool = False,
    math_timeout: int = 5,
    max_math_length: int = 1000,
    thresholds: OmniR1Thresholds | None = None,
) -> float:
    """Scores a predicted answer against the ground truth by a rule cascade: the first rule that applies decides.

    Both rule sets share one order: (1) both sides pure digits: exact string match; (2) both sides one number:
    numeric equality (currency signs, thousands separators, `%` with `50%` == `0.5` == `50`, accounting `(x)`
    negatives); (3) neither side has a math sign (`= + * / ^` or a LaTeX command): text rules; (4) otherwise
    symbolic equivalence by `math_verify` (with timeouts; inputs over `max_math_length` characters score 0).

    - `rules="omni_r1"` reproduces the authors' released cascade rule for rule (`rules_omni_r1.py`): its label
      parsing, formula, chemical-name (Jaccard >= 0.85 and ratio >= 0.90) and number-context (>= 0.90) rules, its
      soft credit (the similarity ratio when strictly above 0.77), its odd cases, and its thresholds, which the
      release's environment variables `SPLITED_THRESH_TEXT`, `SPLITED_THRESH_CHEM_NAME`,
      `SPLITED_THRESH_JACCARD_CHEM` override. Only the math check differs (`math_verify` instead of `mathruler`).
    - `rules="default"` (`rules_default.py`) is the same cascade made never to pay for a wrong answer: a wrong,
      extra or missing number in a text answer scores 0; formulae are read against the periodic table,
      case-sensitively (`CO` is not `Co`); answer prefixes, leading articles, `\\boxed{}` / `$...$` and trailing
      punctuation are removed. `docs/rewards.md` has the table of every difference.

    Args:
        prediction: The extracted answer (see [`extract_answer`]).
        ground_truth: The reference answer.
        rules: `"default"` or `"omni_r1"`.
        similarity_threshold: Soft credit needs a similarity ratio strictly above it; None: 0.77 (for
            `"omni_r1"`, `SPLITED_THRESH_TEXT` when set).
        strict: Exact (normalised) text match instead of soft similarity credit (`"default"` only).
        math_timeout: Seconds allowed to parse and to compare in the math rule.
        max_math_length: Longest input (characters) the math rule parses.
        thresholds: The chemical-name thresholds (and, for `"omni_r1"`, the text threshold); None reads them
            from the environment for `"omni_r1"` and uses the defaults for `"default"`.

    Returns:
        A score in [0, 1] (fractional only through soft similarity credit).

    Example:
        ```python
        >>> answer_score("$1,200", "1200")
        1.0
        >>> answer_score("12 birds", "13 birds"), answer_score("12 birds", "13 birds", rules="omni_r1")
        (0.0, 0.0)
        >>> answer_score("CO", "Co"), answer_score("the Nile", "Nile")
        (0.0, 1.0)
        ```
    """
    if rules == "default":
        return default_answer_score(
            prediction,
            ground_truth,
            similarity_threshold=0.77 if similarity_threshold is None else similarity_threshold,
            strict=strict,
            math_timeout=math_timeout,
            max_math_length=max_math_length,
            thresholds=thresholds,
        )
    if rules == "omni_r1":
        if strict:
            raise ValueError(
                "strict=True changes the authors' soft credit; it is only available with rules='default'."
            )
        thresholds = thresholds or OmniR1Thresholds.from_env()
        if similarity_threshold is not None:
            thresholds = dataclasses.replace(thresholds, text=similarity_threshold)
        return omni_r1_answer_score(prediction, ground_truth, thresholds, math_timeout, max_math_length)
    raise ValueError(f"rules must be one of {ACCURACY_RULES}, got {rules!r}.")


# ----------------------------------------------------------------------------------------------- the reward
def make_accuracy_reward(
    answer_column: str = "answer",
    answer_style: str = "auto",
    similarity_threshold: float | None = None,
    strict: bool = False,
    math_timeout: int = 5,
    rules: str = "default",
    processing_class: Any | None = None,
    image_vocabulary: Any | None = None,
    tags: OutputTags | None = None,
    name: str = "accuracy_reward",
) -> Callable[..., list[float | None]]:
    """Builds an accuracy reward following TRL's reward contract.

    The reward extracts each completion's answer ([`extract_answer`]) and scores it against the dataset column
    `answer_column` with [`answer_score`] under `rules` (`"default"`, or `"omni_r1"` for the authors' released
    rules). A sample whose ground truth is missing (None or empty) gets None, which TRL excludes from that reward.

    TRL decodes `completions` with `skip_special_tokens=True`, so answer tags that are special tokens (the Anole
    control tokens) are missing from the text. Pass `processing_class` (the tokenizer or processor) and the reward
    re-reads the tags from `completion_ids`; otherwise it can still read answers after the final-answer marker,
    and answer tags that are ordinary text. A `processing_class` keyword passed at call time works too.

    Args:
        answer_column: Dataset column with the reference answer.
        answer_style: `"auto"`, `"tags"` or `"thought"` (see [`extract_answer`]).
        similarity_threshold: Soft-credit threshold of the similarity rule (None: 0.77; for `"omni_r1"` the
            release's `SPLITED_THRESH_TEXT` environment variable when set).
        strict: Exact text match instead of soft similarity credit (`rules="default"` only).
        math_timeout: Seconds allowed to the math-equivalence rule per parse / comparison.
        rules: `"default"` (never pays a wrong number) or `"omni_r1"` (the authors' released rules, rule for rule;
            their environment variables for the thresholds are read once, here). See [`answer_score`].
        processing_class: Tokenizer (or processor) used to recover special-token tags from `completion_ids`.
        image_vocabulary: Optional [`~trl_omni.ImageVocabulary`]; image tokens are dropped before decoding.
        tags: The [`~trl_omni.rewards.OutputTags`] that structure a completion (None: the authors' defaults).
        name: The reward's name (TRL logs `rewards/<name>/mean`).

    Returns:
        `reward(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]`.

    Example:
        ```python
        >>> reward = make_accuracy_reward(processing_class=tokenizer)
        >>> reward(prompts=["Q"], completions=["THOUGHT 0: ... Final Answer: 50%"], answer=["0.5"])
        [1.0]
        ```
    """
    if not isinstance(answer_column, str) or not answer_column:
        raise TypeError(f"make_accuracy_reward: answer_column must be a column name, got {answer_column!r}.")
    if answer_style not in ANSWER_STYLES:
        raise ValueError(f"answer_style must be one of {ANSWER_STYLES}, got {answer_style!r}.")
    if rules not in ACCURACY_RULES:
        raise ValueError(f"rules must be one of {ACCURACY_RULES}, got {rules!r}.")
    if not isinstance(strict, bool):
        raise TypeError(f"make_accuracy_reward: strict must be True or False, got {type(strict).__name__} {strict!r}.")
    if check_real(math_timeout, "make_accuracy_reward", "math_timeout") <= 0:
        raise ValueError(f"math_timeout must be > 0 seconds, got {math_timeout}.")
    if similarity_threshold is not None:
        check_real(similarity_threshold, "make_accuracy_reward", "similarity_threshold")
    if similarity_threshold is not None and not 0.0 <= similarity_threshold <= 1.0:
        raise ValueError(f"similarity_threshold must lie in [0, 1], got {similarity_threshold}.")
    if strict and rules != "default":
        raise ValueError("strict=True changes the authors' soft credit; it is only available with rules='default'.")
    thresholds = OmniR1Thresholds.from_env() if rules == "omni_r1" else OmniR1Thresholds()
    tags = OutputTags.resolve(tags, "make_accuracy_reward")

    def score_texts(texts: list[str], kwargs: dict[str, Any]) -> list[float | None]:
        if answer_column not in kwargs:
            raise KeyError(
                f"{name}: the dataset has no column {answer_column!r} (columns received: "
                f"{sorted(k for k in kwargs if k not in ('trainer_state', 'log_metric', 'log_extra'))}). Add the "
                f"column or build the reward with make_accuracy_reward(answer_column=...)."
            )
        rewards: list[float | None] = []
        for text, gold in zip(texts, kwargs[answer_column], strict=True):
            if gold is None or (isinstance(gold, float) and math.isnan(gold)) or not str(gold).strip():
                rewards.append(None)
                continue
            prediction = extract_answer(text, tags, answer_style)
            rewards.append(
                answer_score(
                    prediction, str(gold), rules=rules, similarity_threshold=similarity_threshold, strict=strict,
                    math_timeout=math_timeout, thresholds=thresholds,
                )
            )  # fmt: skip
        return rewards

    reward = text_reward(
        score_texts,
        name,
        f"Accuracy reward (column {answer_column!r}, style {answer_style!r}, rules {rules!r}); see "
        "make_accuracy_reward.",
        tags,
        processing_class,
        image_vocabulary,
        # "thought" answers are read after the final-answer marker: the control tags do not matter there.
        warn_as=None if answer_style == "thought" else name,
        other_markers=(tags.final_answer_marker,) if answer_style == "auto" else (),
    )
    reward.rules = rules
    return reward


accuracy_reward = make_accuracy_reward()
accuracy_reward.__doc__ = """Accuracy reward with the defaults of [`make_accuracy_reward`] (column `answer`).

Extracts the answer (answer tags, else the text after the first `Final Answer:`) and scores it by the default rule
cascade of [`answer_score`] (`make_accuracy_reward(rules="omni_r1")` for the authors' released rules); None when the sample has no ground truth. Answer tags that are special tokens are only
visible when a `processing_class` keyword is passed at call time; otherwise use
`make_accuracy_reward(processing_class=tokenizer)`.
"""
