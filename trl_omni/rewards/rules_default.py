"""The project's accuracy rules (`rules="default"`): the authors' cascade, made to never pay for a wrong answer.

Same order as the authors' rules (digits, numbers, text rules, math) with these changes, each a row of the
deviation table in `docs/rewards.md`: a wrong, extra or missing number in a text answer scores 0 (the authors'
number-context rule only catches near-identical texts); formulae are read against the periodic table and
case-sensitively (`CO` is not `Co`); only delimited labels carry option text (`"B) blue"`, not `"10 apples"`);
two different labels never score; answer prefixes, leading articles, `\\boxed{}` / `$...$` wrappers and trailing
punctuation are removed from both sides; thousands separators must be well formed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter

from .rules_omni_r1 import OmniR1Thresholds, _chemical_name_scores, _looks_like_chemical_name


# ------------------------------------------------------------------------------------------------ cleaning
_SPACES = re.compile(r"\s+")
_ANSWER_PREFIX = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:final\s+)?answer(?:\s+is\b\s*[:\-]?|\s*[:\-])\s*(?=\S)", re.IGNORECASE
)
_ARTICLE = re.compile(r"^(?:the|a|an)\s+(?=\S)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{(.*)\}", re.DOTALL)
_TRAILING_PUNCTUATION = re.compile(r"(?<=\S)[\s.?!;:。]+$")


def clean_answer(text: str) -> str:
    """Whitespace collapsed; `\\boxed{...}`, enclosing `$...$`, an "(the) (final) answer is / answer:" prefix and
    trailing punctuation removed (a number keeps its decimal point: `"12."` stays a number)."""
    s = _SPACES.sub(" ", text).strip()
    boxed = _BOXED.fullmatch(s)
    if boxed:
        s = boxed.group(1).strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and s.count("$") == 2:
        s = s[1:-1].strip()
    s = _ANSWER_PREFIX.sub("", s)
    boxed = _BOXED.fullmatch(s)  # "The answer is \boxed{4}"
    if boxed:
        s = boxed.group(1).strip()
    if parse_number(s) is None:
        s = _TRAILING_PUNCTUATION.sub("", s)
    return s


def _words(text: str) -> str:
    """Lower-cased, punctuation at the ends and a leading article removed, whitespace collapsed."""
    text = _SPACES.sub(" ", text.strip().lower()).strip(" .,;:!?\"'`*")
    return _ARTICLE.sub("", text)


def similarity(a: str, b: str) -> float:
    """`difflib.SequenceMatcher` ratio (autojunk off) of the normalised texts: lower-cased, whitespace collapsed,
    punctuation at the ends and a leading article removed."""
    return difflib.SequenceMatcher(None, _words(a), _words(b), autojunk=False).ratio()


# ------------------------------------------------------------------------------------------------ numbers
_CURRENCY = "$€£¥₹₩₽₫₴₪₦₱฿₭₮₸₺₼₿¢"
_NUMBER_BODY = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_GROUPED = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)(\.\d+)?")


def _number_parts(text: str) -> tuple[float, bool] | None:
    """`(value, percent)` of a text that is one number; the percent sign is noted, not applied."""
    s = text.strip()
    for sign in _CURRENCY:
        s = s.replace(sign, "")
    s = _SPACES.sub(" ", s.replace("\u00a0", " ").replace("\u202f", " ")).strip()
    negative = len(s) >= 2 and s[0] == "(" and s[-1] == ")"
    if negative:
        s = s[1:-1].strip()
    percent = s.endswith("%")
    if percent:
        s = s[:-1].strip()
    for sign in _CURRENCY:  # "($1,000)"
        s = s.replace(sign, "")
    s = s.strip()
    grouped = _GROUPED.fullmatch(s)
    if grouped:  # thousands separators must group by three: "1,200" and "1 000 000", not "1,2"
        s = grouped.group(1) + grouped.group(2).replace(",", "").replace(" ", "") + (grouped.group(3) or "")
    if not _NUMBER_BODY.fullmatch(s):
        return None
    value = float(s)
    if not math.isfinite(value):
        return None
    return (-value if negative else value), percent


def parse_number(text: str) -> float | None:
    """Parses a text that is one number: currency signs, thousands separators (`,` or spaces, in groups of
    three), `%` (applied) and accounting `(x)` negatives.

    `"$1,234.50"` -> 1234.5, `"(3)"` -> -3, `"50%"` -> 0.5, `"1,2"` -> None. Returns None when the text is not one
    number.
    """
    parts = _number_parts(text)
    if parts is None:
        return None
    value, percent = parts
    return value / 100 if percent else value


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def numbers_equal(a: tuple[float, bool], b: tuple[float, bool]) -> bool:
    """Equality of two `(value, percent)` numbers; with one percent sign, `50%` equals both `0.5` and `50`."""
    (value_a, percent_a), (value_b, percent_b) = a, b
    if percent_a == percent_b:
        return _close(value_a, value_b)
    if _close(value_a, value_b):
        return True
    return _close(value_a, 100 * value_b) if percent_a else _close(value_b, 100 * value_a)


_NUMBER_IN_TEXT = re.compile(r"(?P<sign>(?<![^\W_])[-+−])?(?P<number>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)")


def numbers_in_text(text: str) -> list[float]:
    """Every number written in a text, in order: digit runs anywhere (also inside words: `B12`, `Apollo-11`),
    thousands commas read as such, a sign only when it does not follow a letter or digit (`2-methyl` is 2)."""
    values = []
    for match in _NUMBER_IN_TEXT.finditer(text):
        value = float(match.group("number").replace(",", ""))
        values.append(-value if match.group("sign") in ("-", "−") else value)
    return values


def _context_words(text: str) -> set[str]:
    words = re.findall(r"[^\W\d_]+", _NUMBER_IN_TEXT.sub(" ", text).lower())
    # Plural folding, so "12 birds" and "12 bird" agree.
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words} - {
        "the", "a", "an", "is", "are", "there", "it", "answer", "of",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ labels
_LETTERS = "ABCDEFGHIJ"
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10}
_UNICODE_ROMAN = {chr(0x2160 + i): i + 1 for i in range(10)} | {chr(0x2170 + i): i + 1 for i in range(10)}
_LABEL_PREFIX = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*", re.IGNORECASE
)
_LABEL_TOKEN = (
    r"(?:10|[1-9]|VIII|VII|VI|IV|IX|III|II|viii|vii|vi|iv|ix|iii|ii|X|V|I|x|v|[A-Ja-j]|[\u2160-\u2169\u2170-\u2179])"
)
_BARE_LABEL = re.compile(rf"^[(\[]?({_LABEL_TOKEN})[)\]]?\.?$")
_LABEL_WITH_TEXT = re.compile(rf"^[(\[]?({_LABEL_TOKEN})(?:[)\]]\.?|[.:])\s*(\S.*)$", re.DOTALL)


def _label_letter(token: str) -> str | None:
    if len(token) == 1 and token.upper() in _LETTERS:
        return token.upper()  # a single letter in A-J is the letter (so "I" is I, not roman one)
    if token.isdigit():
        number = int(token)
    else:
        number = _UNICODE_ROMAN.get(token) or _ROMAN.get(token.upper())
    return _LETTERS[number - 1] if number and 1 <= number <= 10 else None


def parse_choice(text: str) -> tuple[str | None, str]:
    """Reads a multiple-choice label: A-J, 1-10 (-> A-J), roman I-X in either case or as Unicode numerals
    (`Ⅳ`, `ⅳ`) (-> A-J), with an optional "answer" / "option" / "choice" prefix.

    Returns:
        `(letter, rest)`: the label as a letter A-J (None when the text is not a label) and the option text that
        follows a delimited label (`"B) blue"`, `"(B) blue"`, `"B. blue"`, `"B: blue"` -> `("B", "blue")`; a bare
        label has `rest == ""`; `"A cat"` or `"10 apples"` are not labels).
    """
    s = _LABEL_PREFIX.sub("", text.strip()).strip()
    match = _BARE_LABEL.match(s)
    if match:
        return _label_letter(match.group(1)), ""
    match = _LABEL_WITH_TEXT.match(s)
    if match:
        letter = _label_letter(match.group(1))
        if letter is not None:
            return letter, match.group(2).strip()
    return None, s


# ------------------------------------------------------------------------------------------------ chemistry
_ELEMENTS = frozenset(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr
    Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt
    Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv
    Ts Og""".split()
)
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)|(\()|(\))(\d*)")


def parse_formula(text: str, single_element: bool = False) -> Counter | None:
    """Reads a chemical formula as an element multiset (`"H2O"` -> {H: 2, O: 1}; parentheses and subscripts).

    Only texts made entirely of element symbols of the periodic table, counts and parentheses qualify. A formula
    needs two element symbols or a count, so words such as "No" or "In" are not read as formulae, unless
    `single_element=True` (then `"Co"` is {Co: 1}).
    """
    s = text.strip().translate(_SUBSCRIPTS).replace(" ", "")
    if not s or not s[0].isupper() and s[0] != "(":
        return None
    stack: list[Counter] = [Counter()]
    position = 0
    symbols, has_count = 0, False
    while position < len(s):
        match = _FORMULA_TOKEN.match(s, position)
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
    if len(stack) != 1 or not (symbols >= 2 or has_count or (single_element and symbols == 1)):
        return None
    return stack[0]


# ------------------------------------------------------------------------------------------------ the cascade
_DIGITS = re.compile(r"[0-9]+")
_MATH_SIGNS = re.compile(r"[=+*/^]|\\[A-Za-z]+")
_YES_NO = frozenset({"yes", "no", "true", "false"})


def has_math_signs(text: str) -> bool:
    """Whether the text holds a math sign (`= + * / ^`) or a LaTeX command."""
    return bool(_MATH_SIGNS.search(text))


def compare_text(
    prediction: str, ground_truth: str, similarity_threshold: float, strict: bool, thresholds: OmniR1Thresholds
) -> float:
    """The default text rules (labels, yes/no, formulae, numbers, chemical names, soft similarity)."""
    prediction_label, prediction_rest = parse_choice(prediction)
    truth_label, truth_rest = parse_choice(ground_truth)
    if prediction_label is not None and truth_label is not None:
        return float(prediction_label == truth_label)
    # One side is "B) text", the other plain text: compare the option text.
    if prediction_label is not None and prediction_rest:
        prediction = prediction_rest
    elif truth_label is not None and truth_rest:
        ground_truth = truth_rest

    words_a, words_b = _words(prediction), _words(ground_truth)
    if words_a in _YES_NO and words_b in _YES_NO:  # before formulae: "No" is nobelium, "NO" nitric oxide
        return float(words_a == words_b)

    formula_a, formula_b = parse_formula(prediction), parse_formula(ground_truth)
    if formula_a is not None or formula_b is not None:
        # A formula against a single element symbol is still a formula comparison (CO is not Co).
        formula_a = formula_a if formula_a is not None else parse_formula(prediction, single_element=True)
        formula_b = formula_b if formula_b is not None else parse_formula(ground_truth, single_element=True)
        if formula_a is not None and formula_b is not None:
            return float(formula_a == formula_b)

    numbers_a, numbers_b = numbers_in_text(prediction), numbers_in_text(ground_truth)
    if numbers_a or numbers_b:
        # A wrong, extra or missing number never scores.
        if len(numbers_a) != len(numbers_b) or not all(_close(x, y) for x, y in zip(numbers_a, numbers_b)):
            return 0.0

    if _looks_like_chemical_name(prediction) and _looks_like_chemical_name(ground_truth):
        jaccard, sequence = _chemical_name_scores(prediction, ground_truth)
        return float(jaccard >= thresholds.chemical_jaccard and sequence >= thresholds.chemical_name)

    if numbers_a:
        # Same numbers: right unless the words around them disagree ("5 cm" vs "5 m", "12 birds" vs "12 cats").
        context_a, context_b = _context_words(prediction), _context_words(ground_truth)
        return float(context_a <= context_b or context_b <= context_a)

    if strict:
        return float(words_a == words_b)
    ratio = similarity(prediction, ground_truth)
    return ratio if ratio > similarity_threshold else 0.0


def default_answer_score(
    prediction: str,
    ground_truth: str,
    similarity_threshold: float = 0.77,
    strict: bool = False,
    math_timeout: int = 5,
    max_math_length: int = 1000,
    thresholds: OmniR1Thresholds | None = None,
) -> float:
    """Scores an extracted answer by the default cascade (see [`~trl_omni.rewards.answer_score`])."""
    pred, gold = clean_answer(prediction), clean_answer(ground_truth)
    if not pred:
        return 0.0
    if _DIGITS.fullmatch(pred) and _DIGITS.fullmatch(gold):
        return float(pred == gold)
    number_a, number_b = _number_parts(pred), _number_parts(gold)
    if number_a is not None and number_b is not None:
        return float(numbers_equal(number_a, number_b))
    if not has_math_signs(pred) and not has_math_signs(gold):
        return compare_text(pred, gold, similarity_threshold, strict, thresholds or OmniR1Thresholds())
    from .math_equivalence import math_equal

    return float(math_equal(pred, gold, math_timeout, max_math_length))
