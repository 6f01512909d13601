"""The authors' accuracy rules (`rules="omni_r1"`): the released Omni-R1 cascade, reproduced rule for rule.

Reimplemented from the behaviour of `acc_reward` in `src/PeRPO/rewards.py` of the authors' release
(ModalityDance/Omni-R1): the same rule order, thresholds, label parsing, normalisations and odd cases, so a run can
reproduce the paper's reward. The one difference is the last rule: symbolic math is checked with `math_verify`
(the release calls `mathruler`'s `grade_answer`). `docs/rewards.md` lists every way this differs from the
project's default rules and why.

The three thresholds read the same environment variables as the release (`SPLITED_THRESH_TEXT`,
`SPLITED_THRESH_CHEM_NAME`, `SPLITED_THRESH_JACCARD_CHEM`); explicit arguments override them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass


TEXT_THRESHOLD_ENV = "SPLITED_THRESH_TEXT"
CHEMICAL_NAME_THRESHOLD_ENV = "SPLITED_THRESH_CHEM_NAME"
CHEMICAL_JACCARD_THRESHOLD_ENV = "SPLITED_THRESH_JACCARD_CHEM"
NUMBER_CONTEXT_FLOOR = 0.90
_EPS = 1e-9


@dataclass(frozen=True)
class OmniR1Thresholds:
    """Thresholds of the released cascade.

    Attributes:
        text: Soft credit is the similarity ratio when it is strictly above this (0.77).
        chemical_name: Minimum sequence ratio of two chemical names (0.90).
        chemical_jaccard: Minimum token Jaccard index of two chemical names (0.85).

    The number-context rule zeroes texts whose number-free parts are at least `max(text, 0.90)` similar.
    """

    text: float = 0.77
    chemical_name: float = 0.90
    chemical_jaccard: float = 0.85

    @property
    def number_context(self) -> float:
        return max(self.text, NUMBER_CONTEXT_FLOOR)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OmniR1Thresholds:
        """The defaults, overridden by the release's environment variables when they are set."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, variable in (
            ("text", TEXT_THRESHOLD_ENV),
            ("chemical_name", CHEMICAL_NAME_THRESHOLD_ENV),
            ("chemical_jaccard", CHEMICAL_JACCARD_THRESHOLD_ENV),
        ):
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                raise ValueError(f"Environment variable {variable}={raw!r} is not a number.") from None
        return cls(**values)


# ------------------------------------------------------------------------------------------------ normalisation
_SPACES = re.compile(r"\s+")
_ANSWER_IS = re.compile(r"^\s*(?:the\s+answer\s+is|answer\s+is)\s*[:\-]?\s*", re.IGNORECASE)
_TRAILING_PUNCTUATION = re.compile(r"[\s.?!;:]+$")
_LEADING_ARTICLE = re.compile(r"^\s*(?:the|a|an)\s+", re.IGNORECASE)


def _squash(text: str) -> str:
    return _SPACES.sub(" ", text.strip()).strip()


def _trim(text: str) -> str:
    """Whitespace collapsed, an "(the) answer is" prefix and trailing punctuation removed."""
    text = _ANSWER_IS.sub("", _squash(text))
    return _TRAILING_PUNCTUATION.sub("", text).strip()


def _drop_article(text: str) -> str:
    return _LEADING_ARTICLE.sub("", text.strip())


def ratio(a: str, b: str) -> float:
    """The release's similarity: `difflib.SequenceMatcher` ratio of the lower-cased texts (autojunk on)."""
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


# ------------------------------------------------------------------------------------------------ choice labels
_LETTERS = "ABCDEFGHIJ"
_ROMAN_VALUES = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10}
_UNICODE_ROMAN = str.maketrans(
    {"Ⅰ": "I", "Ⅱ": "II", "Ⅲ": "III", "Ⅳ": "IV", "Ⅴ": "V", "Ⅵ": "VI", "Ⅶ": "VII", "Ⅷ": "VIII", "Ⅸ": "IX", "Ⅹ": "X"}
)
_LABEL = r"(?:[A-Ja-j]|10|[1-9]|i{1,3}|iv|v|vi{1,3}|ix|x|[ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩ])"
_CHOICE = re.compile(
    r"^\s*(?:option|answer)?\s*[:\-)]?\s*[(\[]?\s*"
    rf"(?P<label>{_LABEL})(?=$|\s|[)\].:])"
    r"\s*[)\].:]?\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
_REST_LEAD = re.compile(r"^[\-.:)\]\s]+")


def _label_letter(token: str) -> str | None:
    token = _squash(token)
    if re.fullmatch(r"[A-Ja-j]", token):
        return token.upper()
    number = re.fullmatch(r"\s*(\d{1,2})\s*[)\].:]?", token)
    if number:
        value = int(number.group(1))
        return _LETTERS[value - 1] if 1 <= value <= 10 else None
    value = _ROMAN_VALUES.get(token.translate(_UNICODE_ROMAN).upper())
    return _LETTERS[value - 1] if value else None


def parse_choice_omni_r1(text: str) -> tuple[str | None, str]:
    """The release's label reading: `(letter A-J or None, remaining text)`.

    A label is anchored at the start (after an optional "option"/"answer" prefix and an opening bracket): a letter
    A-J, a number 1-10 or a roman numeral I-X (ASCII in either case, or Unicode `Ⅰ`-`Ⅹ`), followed by the end, a
    space or a closing bracket / period / colon. A label followed by `-` or `(` is not a label, nor is a single
    lower-case letter followed by a word ("a cat"). The remaining text is the option text.
    """
    trimmed = _trim(text)
    match = _CHOICE.match(trimmed)
    if not match:
        return None, trimmed
    raw = match.group("label")
    after = match.end("label")
    while after < len(trimmed) and trimmed[after].isspace():
        after += 1
    if after < len(trimmed) and trimmed[after] in "-(":
        return None, _trim(trimmed)
    if len(raw) == 1 and raw.islower() and after < len(trimmed) and trimmed[after].isalpha():
        return None, _trim(trimmed)
    letter = _label_letter(raw)
    if letter is None:
        return None, trimmed
    rest = _REST_LEAD.sub("", match.group("rest").strip())
    return letter, _trim(rest)


# ------------------------------------------------------------------------------------------------ chemistry
_FORMULA = re.compile(r"(?:[A-Z][a-z]?\d*)+")
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")
_CHEMICAL_MORPHEMES = (
    "benz", "phen", "naphth", "piperazin", "pyrid", "imidazol", "thiazol", "quinazolin", "methyl", "ethyl",
    "propyl", "butyl", "benzyl", "hydroxy", "amino", "oxo", "carbox", "acetyl", "methoxy", "chloro", "fluoro",
    "bromo", "iodo", "sulfon", "sulfone", "yl", "ylidene",
)  # fmt: skip
_LOCANTS = re.compile(r"\d+(?:,\d+)*\s*[-)]")


def _formula_counts(text: str) -> Counter | None:
    """Any run of capitalised one- or two-letter symbols with counts (symbols are not checked against elements)."""
    text = text.replace(" ", "")
    if not _FORMULA.fullmatch(text):
        return None
    counts: Counter = Counter()
    for symbol, count in _FORMULA_TOKEN.findall(text):
        counts[symbol] += int(count) if count else 1
    return counts


def _looks_like_chemical_name(text: str) -> bool:
    has_morpheme = any(morpheme in text.lower() for morpheme in _CHEMICAL_MORPHEMES)
    return has_morpheme and (bool(_LOCANTS.search(text)) or any(ch in text for ch in "-()[]"))


def _chemical_tokens(text: str) -> list[str]:
    text = re.sub(r"[\d,]+", " ", text).replace("-", " ").replace("–", " ")
    return re.findall(r"[a-z]+", re.sub(r"[()\[\]{}]", " ", text).lower())


def _chemical_name_scores(a: str, b: str) -> tuple[float, float]:
    """`(token Jaccard, sequence ratio)` of two chemical names, numbers and punctuation removed."""
    tokens_a, tokens_b = _chemical_tokens(a), _chemical_tokens(b)
    set_a, set_b = set(tokens_a), set(tokens_b)
    jaccard = len(set_a & set_b) / len(set_a | set_b) if set_a and set_b else 0.0
    return jaccard, ratio(" ".join(tokens_a), " ".join(tokens_b))


# ------------------------------------------------------------------------------------------------ numbers
_NUMBER_IN_TEXT = re.compile(r"(?<![A-Za-z])[-+]?\d+(?:\.\d+)?(?![A-Za-z])")
_CURRENCY = "$€£¥₹₩₽₫₴₪₦₱฿₭₮₸₺₼₿"
_STRIP_IN_NUMBERS = re.compile(rf"[{re.escape(_CURRENCY)},\s]")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_ACCOUNTING_NEGATIVE = re.compile(r"^\(\s*.*\s*\)$")
_DIGITS = re.compile(r"\d+")
_MATH_SIGNS = re.compile(r"[=+*/^]|\\[a-zA-Z]+")


def _numbers_in_text(text: str) -> list[float]:
    return [float(number) for number in _NUMBER_IN_TEXT.findall(text)]


def parse_number_omni_r1(text: str) -> tuple[float | None, bool]:
    """The release's number reading: `(value or None, has a percent sign)`.

    `(x)` is negative; a trailing `%` is noted (not applied); currency signs, commas and all whitespace are removed;
    what remains must be digits with an optional sign and decimal part (no exponent, no `.5`, no `12.`).
    """
    text = text.strip()
    negative = bool(_ACCOUNTING_NEGATIVE.match(text))
    if negative:
        text = text[1:-1].strip()
    percent = text.endswith("%")
    if percent:
        text = text[:-1].strip()
    text = _STRIP_IN_NUMBERS.sub("", text)
    if not _PLAIN_NUMBER.fullmatch(text):
        return None, percent
    value = float(text)
    return (-value if negative else value), percent


def _numbers_equal(a: float, a_percent: bool, b: float, b_percent: bool) -> bool:
    if a_percent == b_percent:
        return abs(a - b) < _EPS
    # One side has a percent sign: "50%" equals both "0.5" and "50".
    if abs(a - b) < _EPS:
        return True
    return (a_percent and abs(a - 100 * b) < _EPS) or (b_percent and abs(b - 100 * a) < _EPS)


# ------------------------------------------------------------------------------------------------ the cascade
def _comparable(prediction: str, ground_truth: str) -> tuple[str, str]:
    a, b = _trim(prediction), _trim(ground_truth)
    # Leading articles are dropped only when both sides have one.
    if _drop_article(a) != a and _drop_article(b) != b:
        return _drop_article(a), _drop_article(b)
    return a, b


def compare_text_omni_r1(prediction: str, ground_truth: str, thresholds: OmniR1Thresholds) -> float:
    """The release's text comparison (labels, formulae, chemical names, number context, soft similarity)."""
    prediction_label, prediction_text = parse_choice_omni_r1(prediction)
    truth_label, truth_text = parse_choice_omni_r1(ground_truth)
    if truth_label:
        if not truth_text:  # a bare label: only a matching label scores
            return float(prediction_label == truth_label) if prediction_label else 0.0
        if prediction_label == truth_label:
            return 1.0
    a, b = _comparable(prediction_text or prediction, truth_text or ground_truth)

    counts_a, counts_b = _formula_counts(a.replace(" ", "")), _formula_counts(b.replace(" ", ""))
    if counts_a is not None and counts_b is not None:
        return float(counts_a == counts_b)

    chemical_a, chemical_b = _looks_like_chemical_name(a), _looks_like_chemical_name(b)
    if chemical_a and chemical_b:
        jaccard, sequence = _chemical_name_scores(a, b)
        return float(jaccard >= thresholds.chemical_jaccard and sequence >= thresholds.chemical_name)

    numbers_a, numbers_b = _numbers_in_text(a), _numbers_in_text(b)
    if numbers_a and numbers_b and not (chemical_a or chemical_b):
        if len(numbers_a) == len(numbers_b) and all(abs(x - y) < _EPS for x, y in zip(numbers_a, numbers_b)):
            return 1.0
        context = ratio(_NUMBER_IN_TEXT.sub(" ", a), _NUMBER_IN_TEXT.sub(" ", b))
        if context >= thresholds.number_context:
            return 0.0

    similarity = ratio(a, b)
    return similarity if similarity > thresholds.text else 0.0


def omni_r1_answer_score(
    prediction: str,
    ground_truth: str,
    thresholds: OmniR1Thresholds | None = None,
    math_timeout: int = 5,
    max_math_length: int = 1000,
) -> float:
    """Scores an extracted answer by the released cascade (see [`~trl_omni.rewards.answer_score`])."""
    thresholds = thresholds or OmniR1Thresholds.from_env()
    a, b = prediction.strip(), (ground_truth or "").strip()
    if _DIGITS.fullmatch(a) and _DIGITS.fullmatch(b):
        return float(a == b)
    (value_a, percent_a), (value_b, percent_b) = parse_number_omni_r1(a), parse_number_omni_r1(b)
    if value_a is not None and value_b is not None:
        return float(_numbers_equal(value_a, percent_a, value_b, percent_b))
    if not _MATH_SIGNS.search(a) and not _MATH_SIGNS.search(b):
        return compare_text_omni_r1(a, b, thresholds)
    from .math_equivalence import math_equal

    return float(math_equal(a, b, math_timeout, max_math_length))
