"""The two accuracy rule sets: the authors' released cascade (`rules="omni_r1"`) rule by rule, with its thresholds'
edges and odd cases, every deviation of `rules="default"`, and a property test: a wrong number never scores."""

import difflib
import random

import pytest

from trl_omni.rewards import OmniR1Thresholds, answer_score, make_accuracy_reward


def _ratio(a, b):
    """The release's similarity: lower-cased, autojunk on."""
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


# Exact threshold edges, built so that difflib's ratio 2M/T is the threshold itself.
AT_TEXT_THRESHOLD = ("m" * 77 + "n" * 23, "m" * 77 + "p" * 23)  # ratio 154/200 = 0.77
ABOVE_TEXT_THRESHOLD = ("m" * 78 + "n" * 22, "m" * 78 + "p" * 22)  # 0.78
AT_NUMBER_CONTEXT = ("31 " + "m" * 16 + "nn", "32 " + "m" * 16 + "pp")  # number-free parts: 36/40 = 0.90
BELOW_NUMBER_CONTEXT = ("31 " + "m" * 15 + "nnn", "32 " + "m" * 15 + "ppp")  # 0.85: falls to soft credit

# (prediction, ground truth, expected omni_r1 score), grouped by the rule of the released cascade that decides.
OMNI_R1_CASES = [
    # 1. both pure digits: exact string match
    ("42", "42", 1.0),
    ("007", "7", 0.0),
    # 2. both one number: currency, commas, all whitespace, %, (x)
    ("$1,200", "1200", 1.0),
    ("€ 3.50", "3.5", 1.0),
    ("₿2", "2", 1.0),
    ("(3)", "-3", 1.0),
    ("50%", "0.5", 1.0),
    ("0.5", "50%", 1.0),
    ("50%", "50", 1.0),  # one percent sign: equal values also count
    ("10%", "0.2", 0.0),
    ("007", "7.0", 1.0),  # not both digits: compared as numbers
    ("1,2", "12", 1.0),  # commas are removed wherever they are
    ("1 000 000", "1000000", 1.0),
    ("0.0000000001", "0.0000000002", 1.0),  # absolute tolerance 1e-9
    ("3.14", "3.15", 0.0),
    # 3a. labels: a bare-label ground truth needs a matching label
    ("B", "B", 1.0),
    ("b", "B", 1.0),
    ("3", "C", 1.0),
    ("10", "J", 1.0),
    ("(C)", "C", 1.0),
    ("Answer: B", "B", 1.0),
    ("The answer is (A)", "A", 1.0),
    ("option C", "C", 1.0),
    ("iv", "D", 1.0),
    ("IV", "D", 1.0),
    ("Ⅳ", "D", 1.0),
    ("ⅳ", "D", 0.0),  # a lower-case Unicode numeral matches the pattern but maps to no label
    ("x", "J", 1.0),
    ("blue", "B", 0.0),
    ("Choice C", "C", 0.0),  # only "option" / "answer" prefixes
    ("A cat", "A", 1.0),  # an upper-case letter followed by a word is a label
    ("a cat", "A", 0.0),  # a lower-case one is not
    ("10 apples", "J", 1.0),
    ("A-B", "A", 0.0),  # a label followed by "-" is not a label
    ("B) blue", "B", 1.0),
    ("B) blue", "B) blue", 1.0),
    ("C) blue", "B) blue", 1.0),  # labels differ, option texts agree
    ("C) red", "B) blue", 0.0),
    # 3b. formulae: capitalised symbols with counts, not checked against the periodic table
    ("H2O", "OH2", 1.0),
    ("CO", "Co", 0.0),
    ("No", "NO", 0.0),
    ("AB", "BA", 1.0),
    ("H₂O", "H2O", 0.0),  # subscripts are not digits here: compared as text (0.667)
    # 3c. chemical names: token Jaccard >= 0.85 and sequence ratio >= 0.90, numbers ignored
    ("2-methylpropane", "3-methylpropane", 1.0),
    ("1,2-dichlorobenzene", "1,2-dibromobenzene", 0.0),
    # 3d. numbers in text
    ("12 birds", "13 birds", 0.0),
    ("Room 101", "Room 102", 0.0),
    ("Apollo 11", "Apollo 13", 0.0),
    ("12 cats", "12 birds", 1.0),  # equal number lists score 1 whatever the words
    ("5 cm", "5 m", 1.0),
    ("There are 12 birds", "12", 1.0),
    ("12.", "12", 1.0),
    (*AT_NUMBER_CONTEXT, 0.0),  # number-free parts exactly 0.90 similar: 0
    (*BELOW_NUMBER_CONTEXT, _ratio(*BELOW_NUMBER_CONTEXT)),  # below 0.90: soft credit for a wrong number
    ("vitamin B12", "vitamin B6", _ratio("vitamin B12", "vitamin B6")),  # digits after a letter are not numbers
    ("1234 Main Street", "1235 Main St", _ratio("1234 Main Street", "1235 Main St")),
    # 3e. soft similarity: the ratio when strictly above 0.77; articles dropped only when both sides have one
    (*AT_TEXT_THRESHOLD, 0.0),
    (*ABOVE_TEXT_THRESHOLD, 0.78),
    ("Blue whale.", "blue whale", 1.0),
    ("The answer is blue", "blue", 1.0),
    ("the Nile", "a Nile", 1.0),
    ("the Nile", "Nile", 0.0),  # 8/12
    ("colour", "color", _ratio("colour", "color")),
    (".5", "0.5", 0.8),  # not a number here: ".5" holds 5, then soft credit 4/5
    ("1e3", "1000", 0.0),
    ("Apollo", "Apollo 11", 0.8),
    ("so " + "blue whale " * 20, "blue whale " * 20, 0.0),  # autojunk on 200+ characters
    ("", "", 1.0),  # two empty texts are identical
    ("", "blue", 0.0),
    # 4. math
    ("x^2+2x+1", "(x+1)^2", 1.0),
    ("x^2+1", "(x+1)^2", 0.0),
]


@pytest.mark.parametrize("prediction, answer, expected", OMNI_R1_CASES)
def test_omni_r1_cascade(prediction, answer, expected):
    assert answer_score(prediction, answer, rules="omni_r1") == pytest.approx(expected, abs=1e-12)


def test_threshold_edges_are_exact():
    # The edge cases above sit exactly on the thresholds (not merely near them).
    assert _ratio(*AT_TEXT_THRESHOLD) == 0.77
    strip_numbers = [s.replace("31", " ").replace("32", " ") for s in AT_NUMBER_CONTEXT]
    assert _ratio(*strip_numbers) == 0.90


def test_chemical_name_thresholds_are_inclusive():
    from trl_omni.rewards.rules_omni_r1 import _chemical_name_scores

    a, b = "4-amino-2-chlorophenol methyl", "4-amino-2-chlorophenols methyl"
    jaccard, sequence = _chemical_name_scores(a, b)
    assert 0 < jaccard < 1 and 0 < sequence < 1
    at = OmniR1Thresholds(chemical_jaccard=jaccard, chemical_name=sequence)
    assert answer_score(a, b, rules="omni_r1", thresholds=at) == 1.0
    above_jaccard = OmniR1Thresholds(chemical_jaccard=jaccard + 1e-9, chemical_name=sequence)
    above_sequence = OmniR1Thresholds(chemical_jaccard=jaccard, chemical_name=sequence + 1e-9)
    assert answer_score(a, b, rules="omni_r1", thresholds=above_jaccard) == 0.0
    assert answer_score(a, b, rules="omni_r1", thresholds=above_sequence) == 0.0


def test_omni_r1_thresholds_follow_the_release_environment(monkeypatch):
    pair = ("the red circle", "red circle")  # one article: ratio 20/24 = 0.833
    assert answer_score(*pair, rules="omni_r1") == pytest.approx(20 / 24)
    monkeypatch.setenv("SPLITED_THRESH_TEXT", "0.9")
    assert answer_score(*pair, rules="omni_r1") == 0.0
    assert answer_score(*pair, rules="omni_r1", similarity_threshold=0.5) == pytest.approx(20 / 24)  # argument wins
    reward = make_accuracy_reward(rules="omni_r1")  # the environment is read when the reward is built
    monkeypatch.setenv("SPLITED_THRESH_TEXT", "0.5")
    assert reward(["q"], ["Final Answer: the red circle"], answer=["red circle"]) == [0.0]
    assert OmniR1Thresholds(text=0.95).number_context == 0.95  # max(text, 0.90)
    monkeypatch.setenv("SPLITED_THRESH_CHEM_NAME", "high")
    with pytest.raises(ValueError, match="SPLITED_THRESH_CHEM_NAME='high'"):
        answer_score("a", "b", rules="omni_r1")


def test_rules_are_validated():
    with pytest.raises(ValueError, match="rules must be one of"):
        answer_score("a", "a", rules="paper")
    with pytest.raises(ValueError, match="rules must be one of"):
        make_accuracy_reward(rules="paper")
    with pytest.raises(ValueError, match="only available with rules='default'"):
        make_accuracy_reward(rules="omni_r1", strict=True)


# One row per deviation of the default rules (docs/rewards.md has the same table): (id, prediction, ground truth,
# omni_r1 score, default score).
DEVIATIONS = [
    ("wrong number, context below 0.90", *BELOW_NUMBER_CONTEXT, _ratio(*BELOW_NUMBER_CONTEXT), 0.0),
    ("wrong number inside a word", "vitamin B12", "vitamin B6", _ratio("vitamin B12", "vitamin B6"), 0.0),
    ("wrong number, long number", "1234 Main Street", "1235 Main St", _ratio("1234 Main Street", "1235 Main St"), 0.0),
    ("missing number", "Apollo", "Apollo 11", 0.8, 0.0),
    ("same number, other words", "12 cats", "12 birds", 1.0, 0.0),
    ("same number, other unit", "5 cm", "5 m", 1.0, 0.0),
    ("chemical names with other locants", "2-methylpropane", "3-methylpropane", 1.0, 0.0),
    ("malformed thousands separator", "1,2", "12", 1.0, 0.0),
    ("tiny numbers", "0.0000000001", "0.0000000002", 1.0, 0.0),
    ("decimal without leading zero", ".5", "0.5", 0.8, 1.0),
    ("exponent", "1e3", "1000", 0.0, 1.0),
    ("symbols that are not elements", "AB", "BA", 1.0, 0.0),
    ("formula with parentheses", "Ca(OH)2", "CaO2H2", 0.0, 1.0),
    ("formula with subscripts", "H₂O", "H2O", 0.0, 1.0),
    ("yes / no in capitals", "No", "NO", 0.0, 1.0),
    ("digit followed by a word is no label", "10 apples", "J", 1.0, 0.0),
    ("capital letter followed by a word is no label", "A cat", "A", 1.0, 0.0),
    ("different labels, same option text", "C) blue", "B) blue", 1.0, 0.0),
    ("lower-case Unicode roman numeral", "ⅳ", "D", 0.0, 1.0),
    ("'choice' prefix", "Choice C", "C", 0.0, 1.0),
    ("'Answer:' prefix on text", "Answer: blue", "blue", 0.0, 1.0),
    ("article on one side", "the Nile", "Nile", 0.0, 1.0),
    ("long answers (autojunk)", "so " + "blue whale " * 20, "blue whale " * 20, 0.0, None),
    ("empty answer", "", "", 1.0, 0.0),
]


@pytest.mark.parametrize(
    "prediction, answer, omni_r1, default", [d[1:] for d in DEVIATIONS], ids=[d[0] for d in DEVIATIONS]
)
def test_default_deviation(prediction, answer, omni_r1, default):
    assert answer_score(prediction, answer, rules="omni_r1") == pytest.approx(omni_r1, abs=1e-12)
    if default is None:  # soft credit of the autojunk-free ratio
        default = difflib.SequenceMatcher(None, "blue whale " * 20, "blue whale " * 20, autojunk=False).ratio()
        assert answer_score(prediction, answer) > 0.99
        return
    assert answer_score(prediction, answer) == pytest.approx(default, abs=1e-12)


def test_default_fixes_the_cases_of_the_issue():
    for prediction, answer in [("12 birds", "13 birds"), ("Room 101", "Room 102"), ("Apollo 11", "Apollo 13"),
                               ("CO", "Co"), ("Co", "CO")]:  # fmt: skip
        assert answer_score(prediction, answer) == 0.0, (prediction, answer)
    for prediction, answer in [("There are 12 birds", "12"), ("12 birds", "12 bird"), ("The answer is 12", "12"),
                               ("Room 101", "room 101"), ("CO", "CO"), ("Co", "Co"), ("2-methylpropane",
                               "2-methylpropane"), ("3", "3 birds"), ("the Nile", "Nile"), ("Ⅲ", "C")]:  # fmt: skip
        assert answer_score(prediction, answer) == 1.0, (prediction, answer)


# ------------------------------------------------------------------------------------ property: no wrong number pays
_TEMPLATES = [
    "{}", "{} birds", "Room {}", "Apollo {}", "${}", "€{}", "{}%", "({})", "{} km", "{} km/h", "the answer is {}",
    "The answer is {} apples.", "about {} people", "{} apples and 3 pears", "version {}", "B{}", "chapter {}",
    "{}-methylpropane", "\\boxed{{{}}}", "x = {}", "Option {}", "{} cm", "row {}", "{} of them",
]  # fmt: skip


def _format_number(rng, value):
    if isinstance(value, int):
        return rng.choice([str(value), f"{value:,}", f"{value}.0" if rng.random() < 0.2 else str(value)])
    return rng.choice([f"{value}", f"{value:.3f}".rstrip("0").rstrip(".")])


def test_a_wrong_number_never_scores_in_default_mode():
    rng = random.Random(0)
    checked = 0
    while checked < 400:
        if rng.random() < 0.7:
            a, b = rng.randint(0, 3000), rng.randint(0, 3000)
        else:
            a, b = round(rng.uniform(0, 100), rng.randint(1, 3)), round(rng.uniform(0, 100), rng.randint(1, 3))
        text_a, text_b = _format_number(rng, a), _format_number(rng, b)
        value_a, value_b = float(text_a.replace(",", "")), float(text_b.replace(",", ""))
        # Different numbers under every reading (50% is both 0.5 and 50).
        if len({value_a, value_b, 100 * value_a, 100 * value_b}) < 4 or 0 in (value_a, value_b):
            continue
        template_a = rng.choice(_TEMPLATES)
        template_b = template_a if rng.random() < 0.6 else rng.choice(_TEMPLATES)
        if "\\boxed" in template_a + template_b or "=" in template_a + template_b:
            if rng.random() < 0.9:  # math_verify is slow: a few math cases are enough
                continue
        prediction, truth = template_a.format(text_a), template_b.format(text_b)
        assert answer_score(prediction, truth) == 0.0, (prediction, truth)
        checked += 1


def test_reward_with_rules():
    completions = ["THOUGHT 0: count. Final Answer: 12 cats", "Final Answer: the Nile"]
    answers = ["12 birds", "Nile"]
    assert make_accuracy_reward(rules="omni_r1")(["q", "q"], completions, answer=answers) == [1.0, 0.0]
    reward = make_accuracy_reward()
    assert reward(["q", "q"], completions, answer=answers) == [0.0, 1.0]
    assert reward.rules == "default"
