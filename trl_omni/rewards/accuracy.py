"""Accuracy reward: the Omni-R1 rule cascade (digits, numbers, choice labels, formulae, similarity, math)."""

from __future__ import annotations

import difflib
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ._common import (
    DEFAULT_TAGS,
    OutputTags,
    _TagRestorer,
    completion_texts,
    logger,
    resolve_restorer,
    warn_if_tags_stripped,
)


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
    if style not in ("auto", "tags", "thought"):
        raise ValueError(f"style must be 'auto', 'tags' or 'thought', got {style!r}.")
    if style in ("auto", "tags") and tags.answer_open in text:
        inner = text.split(tags.answer_open, 1)[1]
        return inner.split(tags.answer_close, 1)[0].strip()
    if style in ("auto", "thought") and tags.final_answer_marker in text:
        inner = text.split(tags.final_answer_marker, 1)[1]
        return inner.split(tags.answer_open, 1)[0].split(tags.answer_close, 1)[0].strip()
    return ""


# ----------------------------------------------------------------------------------------------- rule helpers
_CURRENCY = "$€£¥₹₩₽¢"
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def parse_number(text: str) -> float | None:
    """Parses a number written with currency signs, thousands commas, spaces, `%` and accounting `(x)` negatives.

    `"$1,234.50"` -> 1234.5, `"(3)"` -> -3, `"50%"` -> 0.5. Returns None when the text is not one number.
    """
    s = text.strip()
    for ch in _CURRENCY:
        s = s.replace(ch, "")
    s = s.replace(",", "").replace(" ", "").replace("\u00a0", "")
    negative = False
    if len(s) >= 2 and s[0] == "(" and s[-1] == ")":
        negative, s = True, s[1:-1]
        s = s.replace(" ", "")
    scale = 1.0
    if s.endswith("%"):
        scale, s = 0.01, s[:-1]
    if not _NUMBER_RE.fullmatch(s):
        return None
    value = float(s) * scale
    return -value if negative else value


_MATH_SIGN_RE = re.compile(r"[=+*/^]|\\[A-Za-z]+")


def has_math_signs(text: str) -> bool:
    """Whether the text holds a math sign (`= + * / ^`) or a LaTeX command."""
    return bool(_MATH_SIGN_RE.search(text))


_LETTERS = "ABCDEFGHIJ"
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10}
_LABEL_PREFIX_RE = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*", re.IGNORECASE
)
_LABEL_TOKEN = r"(?:10|[1-9]|X|IX|VIII|VII|VI|V|IV|III|II|I|[A-Ja-j])"
_BARE_LABEL_RE = re.compile(rf"^[\(\[]?({_LABEL_TOKEN})[\)\]]?\.?$")
_LABEL_WITH_TEXT_RE = re.compile(rf"^[\(\[]?({_LABEL_TOKEN})(?:[\)\]]\.?|[\.:])\s*(\S.*)$", re.DOTALL)


def _label_letter(token: str) -> str | None:
    if token.upper() in _LETTERS and len(token) == 1:
        return token.upper()  # a single letter in A-J is read as a letter (so "I" is I, not roman one)
    if token.isdigit():
        number = int(token)
        return _LETTERS[number - 1] if 1 <= number <= 10 else None
    number = _ROMAN.get(token.upper())
    return _LETTERS[number - 1] if number else None


def parse_choice(text: str) -> tuple[str | None, str]:
    """Reads a multiple-choice label: A-J, 1-10 (-> A-J), roman I-X (-> A-J), optional answer/option prefix.

    Returns:
        `(letter, rest)`: the label as a letter A-J (None when the text is not a label) and the option text that
        follows it (`"B) blue"` -> `("B", "blue")`; a bare label has `rest == ""`).
    """
    s = _LABEL_PREFIX_RE.sub("", text.strip()).strip()
    match = _BARE_LABEL_RE.match(s)
    if match:
        return _label_letter(match.group(1)), ""
    match = _LABEL_WITH_TEXT_RE.match(s)
    if match:
        letter = _label_letter(match.group(1))
        if letter is not None:
            return letter, match.group(2).strip()
    return None, s


_ELEMENTS = frozenset(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr
    Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt
    Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv
    Ts Og""".split()
)
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_FORMULA_TOKEN_RE = re.compile(r"([A-Z][a-z]?)(\d*)|(\()|(\))(\d*)")


def parse_formula(text: str) -> Counter | None:
    """Reads a chemical formula as an element multiset (`"H2O"` -> {H: 2, O: 1}; parentheses groups supported).

    Only texts made entirely of known element symbols, counts and parentheses qualify, and a formula needs at least
    two element symbols or a count, so single words such as "No" or "In" are not read as formulae.
    """
    s = text.strip().translate(_SUBSCRIPTS).replace(" ", "")
    if not s or not s[0].isupper() and s[0] != "(":
        return None
    stack: list[Counter] = [Counter()]
    position = 0
    symbols, has_count = 0, False
    while position < len(s):
        match = _FORMULA_TOKEN_RE.match(s, position)
        if not match or match.end() == position:
            return None
        element, count, opening, closing, group_count = match.groups()
        if element:
            if element not in _ELEMENTS:
                return None
            stack[-1][element] += int(count) if count else 1
            symbols += 1
            has_count |= bool(count)
        elif opening:
            stack.append(Counter())
        elif closing:
            if len(stack) == 1:
                return None
            group = stack.pop()
            factor = int(group_count) if group_count else 1
            has_count |= bool(group_count)
            for key, value in group.items():
                stack[-1][key] += value * factor
        position = match.end()
    if len(stack) != 1 or not (symbols >= 2 or has_count):
        return None
    return stack[0]


def _normalize_text(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.strip(" .,;:!?\"'`*")


def similarity(a: str, b: str) -> float:
    """`difflib.SequenceMatcher` ratio of the normalised (lower-cased, whitespace-collapsed) texts."""
    return difflib.SequenceMatcher(None, _normalize_text(a), _normalize_text(b), autojunk=False).ratio()


def _clean(text: str) -> str:
    s = text.strip()
    boxed = re.fullmatch(r"\\boxed\{(.*)\}", s, re.DOTALL)
    if boxed:
        s = boxed.group(1).strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and s.count("$") == 2:
        s = s[1:-1].strip()
    if s.endswith(".") and not _NUMBER_RE.fullmatch(s):
        s = s[:-1].rstrip()
    return s


# ----------------------------------------------------------------------------------------------- math equivalence
def _math_verify_equal(prediction: str, ground_truth: str, timeout_seconds: int) -> bool:
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)

    def _parse(text: str) -> list:
        # A bare expression is read as LaTeX math first: the plain-expression extractor stops at the first number
        # ("3*x" -> 3).
        parsed = parse(f"${text}$", parsing_timeout=timeout_seconds) if "$" not in text else []
        return parsed or parse(text, parsing_timeout=timeout_seconds)

    gold = _parse(ground_truth)
    if not gold:
        return _normalize_text(prediction) == _normalize_text(ground_truth) and bool(prediction.strip())
    target = _parse(prediction)
    if not target:
        return False
    return bool(verify(gold, target, timeout_seconds=timeout_seconds))


class _MathVerifier:
    """Runs `math_verify` so that adversarial input cannot hang training.

    In the main thread, `math_verify`'s own `signal.alarm` timeouts apply (they interrupt parsing and sympy
    simplification). Signals only work in the main thread, so from any other thread (async rewards, thread pools)
    the check runs in a single worker process (started once, with `spawn`) whose main thread has those timeouts,
    and a wall-clock limit on the result kills and replaces the worker if it still does not answer.
    """

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            # Start-up (importing sympy) is not part of any comparison's time budget.
            pool.submit(_warm_up).result(timeout=300)
            self._pool = pool
        return self._pool

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
            pool.shutdown(wait=False, cancel_futures=True)

    def equal(self, prediction: str, ground_truth: str, timeout_seconds: int) -> bool:
        if threading.current_thread() is threading.main_thread():
            return _math_verify_equal(prediction, ground_truth, timeout_seconds)
        with self._lock:
            future = self._get_pool().submit(_math_verify_equal, prediction, ground_truth, timeout_seconds)
            try:
                return bool(future.result(timeout=3 * timeout_seconds + 5))
            except FutureTimeout:
                self._kill_pool()
                return False
            except Exception as error:  # a crashed worker (e.g. killed for memory) must not stop training
                logger.warning("math_verify worker failed (%s); the comparison scores 0.", error)
                self._kill_pool()
                return False


def _warm_up() -> bool:
    import math_verify  # noqa: F401

    return True


_MATH_VERIFIER = _MathVerifier()


# ----------------------------------------------------------------------------------------------- the cascade
def answer_score(
    prediction: str,
    ground_truth: str,
    similarity_threshold: float = 0.77,
    strict: bool = False,
    math_timeout: int = 5,
    max_math_length: int = 1000,
) -> float:
    """Scores a predicted answer against the ground truth by the Omni-R1 rule cascade (first applicable rule).

    1. Both sides are pure digits: exact string match (1.0 / 0.0).
    2. Both sides parse as numbers ([`parse_number`]: currency signs, commas, spaces, `%`, `(x)` negatives,
       so `50%` equals `0.5`): numeric equality (relative tolerance 1e-9).
    3. Neither side has a math sign (`= + * / ^` or a LaTeX command): text comparison.
       a. Both sides are multiple-choice labels ([`parse_choice`]): A-J, 1-10 and roman I-X all map to A-J, an
          "answer"/"option" prefix is ignored, and "B) text" counts as label B: labels must match. When only one
          side is a label with option text ("B) blue" vs "blue"), the option text is compared instead (rule c).
       b. Both sides are chemical formulae ([`parse_formula`]): equal element multisets.
       c. Otherwise: soft credit, the [`similarity`] ratio when it is above `similarity_threshold` (else 0.0);
          with `strict=True`, 1.0 for equal normalised texts and 0.0 otherwise.
    4. Otherwise: symbolic equivalence by `math_verify` (1.0 / 0.0), with a timeout; inputs longer than
       `max_math_length` characters score 0.0 without being parsed.

    Before the cascade, surrounding whitespace, a `\\boxed{...}` wrapper, enclosing `$...$` and a trailing period
    are removed from both sides.

    Args:
        prediction: The extracted answer (see [`extract_answer`]).
        ground_truth: The reference answer.
        similarity_threshold: Minimum similarity ratio (exclusive) that earns soft credit.
        strict: Replace soft similarity credit by exact (normalised) text match.
        math_timeout: Seconds allowed to parse and to compare in the math rule.
        max_math_length: Longest input (characters) the math rule parses.

    Returns:
        A score in [0, 1].

    Example:
        ```python
        >>> answer_score("$1,200", "1200")
        1.0
        >>> answer_score("(B) blue", "B")
        1.0
        >>> answer_score("\\\\frac{1}{2}", "0.5")
        1.0
        ```
    """
    pred, gold = _clean(prediction), _clean(ground_truth)
    if not pred:
        return 0.0
    if pred.isdigit() and gold.isdigit():
        return float(pred == gold)
    pred_number, gold_number = parse_number(pred), parse_number(gold)
    if pred_number is not None and gold_number is not None:
        return float(math.isclose(pred_number, gold_number, rel_tol=1e-9, abs_tol=1e-12))
    if not has_math_signs(pred) and not has_math_signs(gold):
        pred_label, pred_rest = parse_choice(pred)
        gold_label, gold_rest = parse_choice(gold)
        if pred_label is not None and gold_label is not None:
            return float(pred_label == gold_label)
        # One side is "B) text", the other plain text: compare the option text.
        if pred_label is not None and pred_rest:
            pred = pred_rest
        elif gold_label is not None and gold_rest:
            gold = gold_rest
        pred_formula, gold_formula = parse_formula(pred), parse_formula(gold)
        if pred_formula is not None and gold_formula is not None:
            return float(pred_formula == gold_formula)
        if strict:
            return float(_normalize_text(pred) == _normalize_text(gold))
        ratio = similarity(pred, gold)
        return ratio if ratio > similarity_threshold else 0.0
    if len(pred) > max_math_length or len(gold) > max_math_length:
        return 0.0
    return float(_MATH_VERIFIER.equal(pred, gold, math_timeout))


# ----------------------------------------------------------------------------------------------- the reward
def make_accuracy_reward(
    answer_column: str = "answer",
    answer_style: str = "auto",
    similarity_threshold: float = 0.77,
    strict: bool = False,
    math_timeout: int = 5,
    processing_class: Any | None = None,
    image_vocabulary: Any | None = None,
    reasoning_open: str = OutputTags.reasoning_open,
    reasoning_close: str = OutputTags.reasoning_close,
    answer_open: str = OutputTags.answer_open,
    answer_close: str = OutputTags.answer_close,
    final_answer_marker: str = OutputTags.final_answer_marker,
    name: str = "accuracy_reward",
) -> Callable[..., list[float | None]]:
    """Builds an accuracy reward following TRL's reward contract.

    The reward extracts each completion's answer ([`extract_answer`]) and scores it against the dataset column
    `answer_column` with [`answer_score`] (the Omni-R1 rule cascade). A sample whose ground truth is missing
    (None or empty) gets None, which TRL excludes from that reward.

    TRL decodes `completions` with `skip_special_tokens=True`, so answer tags that are special tokens (the Anole
    control tokens) are missing from the text. Pass `processing_class` (the tokenizer or processor) and the reward
    re-reads the tags from `completion_ids`; otherwise it can still read answers after the final-answer marker,
    and answer tags that are ordinary text. A `processing_class` keyword passed at call time works too.

    Args:
        answer_column: Dataset column with the reference answer.
        answer_style: `"auto"`, `"tags"` or `"thought"` (see [`extract_answer`]).
        similarity_threshold: Soft-credit threshold of the similarity rule.
        strict: Exact text match instead of soft similarity credit.
        math_timeout: Seconds allowed to the math-equivalence rule per parse / comparison.
        processing_class: Tokenizer (or processor) used to recover special-token tags from `completion_ids`.
        image_vocabulary: Optional [`~trl_omni.ImageVocabulary`]; image tokens are dropped before decoding.
        reasoning_open, reasoning_close, answer_open, answer_close, final_answer_marker: Output-format strings.
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
    if not 0.0 <= similarity_threshold <= 1.0:
        raise ValueError(f"similarity_threshold must lie in [0, 1], got {similarity_threshold}.")
    tags = OutputTags(reasoning_open, reasoning_close, answer_open, answer_close, final_answer_marker)
    restorer = _TagRestorer(processing_class, tags.control_tags, image_vocabulary) if processing_class else None
    call_cache: dict = {}

    def reward(
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        completions = list(completions or [])
        if answer_column not in kwargs:
            raise KeyError(
                f"{name}: the dataset has no column {answer_column!r} (columns received: "
                f"{sorted(k for k in kwargs if k not in ('trainer_state', 'log_metric', 'log_extra'))}). Add the "
                f"column or build the reward with make_accuracy_reward(answer_column=...)."
            )
        answers = kwargs[answer_column]
        active = resolve_restorer(restorer, kwargs, tags.control_tags, call_cache)
        texts = completion_texts(completions, completion_ids, active)
        if answer_style != "thought":
            markers = (tags.final_answer_marker,) if answer_style == "auto" else ()
            warn_if_tags_stripped(name, texts, completion_ids, active, tags, markers)
        rewards: list[float | None] = []
        for text, gold in zip(texts, answers, strict=True):
            if gold is None or (isinstance(gold, float) and math.isnan(gold)) or not str(gold).strip():
                rewards.append(None)
                continue
            prediction = extract_answer(text, tags, answer_style)
            rewards.append(
                answer_score(
                    prediction, str(gold), similarity_threshold=similarity_threshold, strict=strict,
                    math_timeout=math_timeout,
                )
            )  # fmt: skip
        return rewards

    reward.__name__ = name
    reward.__qualname__ = name
    reward.__doc__ = f"Accuracy reward (column {answer_column!r}, style {answer_style!r}); see make_accuracy_reward."
    return reward


accuracy_reward = make_accuracy_reward()
accuracy_reward.__doc__ = """Accuracy reward with the defaults of [`make_accuracy_reward`] (column `answer`).

Extracts the answer (answer tags, else the text after the first `Final Answer:`) and scores it by the Omni-R1 rule
cascade of [`answer_score`]; None when the sample has no ground truth. Answer tags that are special tokens are only
visible when a `processing_class` keyword is passed at call time; otherwise use
`make_accuracy_reward(processing_class=tokenizer)`.
"""
