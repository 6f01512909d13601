"""Table-driven tests of the accuracy and format rewards (the Omni-R1 rule cascade, both output styles)."""

import difflib
import threading

import pytest

from trl_omni.rewards import (
    OutputTags,
    accuracy_reward,
    answer_score,
    extract_answer,
    format_reward,
    format_score,
    format_thought_reward,
    make_accuracy_reward,
    make_format_reward,
    parse_choice,
    parse_formula,
    parse_number,
)
from trl_omni.testing import ANSWER_CLOSE, ANSWER_OPEN, REASONING_CLOSE, REASONING_OPEN, tiny_chameleon_tokenizer


def _ratio(a, b):
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


# (prediction, ground truth, expected score) -- grouped by the rule that decides them.
ACCURACY_CASES = [
    # 1. both pure digits: exact string match
    ("42", "42", 1.0),
    ("42", "43", 0.0),
    ("007", "7", 0.0),
    ("  12 ", "12", 1.0),
    ("0", "0", 1.0),
    # 2. numbers: currency, commas, spaces, percent, (x) negatives
    ("$1,200", "1200", 1.0),
    ("1,200.00", "1200", 1.0),
    ("€ 3.50", "3.5", 1.0),
    ("£10", "10.0", 1.0),
    ("50%", "0.5", 1.0),
    ("0.5", "50%", 1.0),
    ("50%", "50", 1.0),  # one side has a percent sign: 50% is both 0.5 and 50 (the authors' rule)
    ("(3)", "-3", 1.0),
    ("($1,000)", "-1000", 1.0),
    ("-2.5", "-2.50", 1.0),
    ("1 000 000", "1000000", 1.0),
    ("3.14", "3.15", 0.0),
    ("1e3", "1000", 1.0),
    ("12.", "12", 1.0),
    (".5", "0.5", 1.0),
    # 3a. multiple-choice labels: A-J, 1-10 -> A-J, roman I-X, prefixes, bare label vs "B) text"
    ("B", "B", 1.0),
    ("b", "B", 1.0),
    ("(C)", "C", 1.0),
    ("[D]", "D", 1.0),
    ("C", "D", 0.0),
    ("Answer: B", "B", 1.0),
    ("The answer is (A)", "A", 1.0),
    ("option C", "C", 1.0),
    ("Option: J", "J", 1.0),
    ("3", "C", 1.0),
    ("C", "3", 1.0),
    ("10", "J", 1.0),
    ("III", "C", 1.0),
    ("IV", "D", 1.0),
    ("option IV", "D", 1.0),
    ("X", "J", 1.0),
    ("II", "C", 0.0),
    ("B) blue", "B", 1.0),
    ("(B) blue", "B", 1.0),
    ("B. blue", "B", 1.0),
    ("A) red", "B", 0.0),
    ("B) blue", "blue", 1.0),
    ("blue", "B) blue", 1.0),
    # 3b. chemical formulae as element multisets
    ("H2O", "H2O", 1.0),
    ("OH2", "H2O", 1.0),
    ("H₂O", "H2O", 1.0),
    ("CO2", "CO", 0.0),
    ("NaCl", "ClNa", 1.0),
    ("CH3COOH", "C2H4O2", 1.0),
    ("Ca(OH)2", "CaO2H2", 1.0),
    ("Fe2O3", "Fe3O4", 0.0),
    ("H2SO4", "SO4H2", 1.0),
    # 3c. soft similarity (credit = ratio when > 0.77) and the strict mode (see STRICT_CASES)
    ("blue whale", "Blue whale.", 1.0),
    ("the red circle", "red circle", 1.0),  # leading articles are dropped
    ("the red circles", "red circle", _ratio("red circles", "red circle")),
    ("colour", "color", 0.0),  # ratio 10/11 = 0.909 > 0.77 -> credited below
    ("elephant", "giraffe", 0.0),
    ("yes", "no", 0.0),
    ("Yes", "yes", 1.0),
    ("No", "NO", 1.0),  # one symbol: a word, not a formula
    ("top left corner", "top-left corner", _ratio("top left corner", "top-left corner")),
    ("", "blue", 0.0),
    # 4. symbolic math via math_verify
    ("\\frac{1}{2}", "0.5", 1.0),
    ("$\\frac{3}{4}$", "0.75", 1.0),
    ("x^2+2x+1", "(x+1)^2", 1.0),
    ("x^2+1", "(x+1)^2", 0.0),
    ("\\sqrt{4}", "2", 1.0),
    ("2/4", "1/2", 1.0),
    ("x=2", "2", 1.0),
    ("\\boxed{\\frac{2}{3}}", "\\frac{4}{6}", 1.0),
    ("3*x", "x*3", 1.0),
    ("\\pi", "3.14", 0.0),
]
ACCURACY_CASES[ACCURACY_CASES.index(("colour", "color", 0.0))] = ("colour", "color", _ratio("colour", "color"))


@pytest.mark.parametrize("prediction, answer, expected", ACCURACY_CASES)
def test_answer_score_table(prediction, answer, expected):
    assert answer_score(prediction, answer) == pytest.approx(expected, abs=1e-9)


def test_soft_credit_threshold_and_strict_mode():
    # "red circles" vs "red circle": ratio 20/21 = 0.952 > 0.77 -> credited; strict -> 0.
    assert answer_score("red circles", "red circle") == pytest.approx(20 / 21)
    assert answer_score("red circles", "red circle", strict=True) == 0.0
    assert answer_score("Red circle.", "red circle", strict=True) == 1.0
    # raising the threshold above the ratio removes the credit
    assert answer_score("red circles", "red circle", similarity_threshold=0.96) == 0.0
    # a ratio exactly at the threshold is not credited (strictly above)
    assert answer_score("abcd", "abce", similarity_threshold=0.75) == 0.0


def test_table_covers_every_rule():
    assert len(ACCURACY_CASES) + len(EXTRACTION_CASES) + len(FORMAT_CASES) >= 60
    assert len(ACCURACY_CASES) >= 60


def test_parsers():
    assert parse_number("$1,234.50") == 1234.5
    assert parse_number("(7%)") == pytest.approx(-0.07)
    assert parse_number("abc") is None
    assert parse_choice("(B) blue") == ("B", "blue")
    assert parse_choice("answer is IV") == ("D", "")
    assert parse_choice("A cat") == (None, "A cat")
    assert parse_formula("Ca(OH)2") == {"Ca": 1, "O": 2, "H": 2}
    assert parse_formula("No") is None and parse_formula("Xy2") is None and parse_formula("Ca(OH") is None


def test_math_rule_is_timeout_safe_on_adversarial_input():
    # Comparing these needs an astronomically large evaluation; the math rule must give up (0.0), not hang.
    assert answer_score("9^{9^{9^{9}}}", "9^{9^{9^{8}}}", math_timeout=1) == 0.0
    assert answer_score("x^2" * 600, "x", max_math_length=1000) == 0.0  # too long: not parsed


def test_math_rule_from_a_worker_thread():
    # signal-based timeouts only work in the main thread: other threads go through a worker process.
    results = {}
    thread = threading.Thread(target=lambda: results.update(v=answer_score("\\frac{1}{2}", "2/4")))
    thread.start()
    thread.join(timeout=300)
    assert results["v"] == 1.0


# (completion text, style, expected extracted answer)
EXTRACTION_CASES = [
    (f"Lead. {REASONING_OPEN}think{REASONING_CLOSE}{ANSWER_OPEN} B {ANSWER_CLOSE}", "auto", "B"),
    (f"{ANSWER_OPEN}42", "auto", "42"),  # truncated before the closing tag
    ("THOUGHT 0: add. Final Answer: 42", "auto", "42"),
    ("Final Answer: 1 Final Answer: 2", "auto", "1 Final Answer: 2"),  # text after the FIRST marker
    ("no answer here", "auto", ""),
    (f"Final Answer: 3 {ANSWER_OPEN}4{ANSWER_CLOSE}", "thought", "3"),
    (f"Final Answer: 3 {ANSWER_OPEN}4{ANSWER_CLOSE}", "tags", "4"),
    ("Final Answer: 3", "tags", ""),
]


@pytest.mark.parametrize("text, style, expected", EXTRACTION_CASES)
def test_extract_answer(text, style, expected):
    assert extract_answer(text, OutputTags(), style) == expected


def test_extract_answer_custom_tags():
    tags = OutputTags(answer_open="<answer>", answer_close="</answer>", final_answer_marker="ANSWER:")
    assert extract_answer("<think>x</think><answer> 7 </answer>", tags) == "7"
    assert extract_answer("ANSWER: 8", tags) == "8"


# (completion text, style, expected)
FORMAT_CASES = [
    (f"Lead. {REASONING_OPEN}r{REASONING_CLOSE}{ANSWER_OPEN}B{ANSWER_CLOSE}", "tags", 1.0),
    (f"{REASONING_OPEN}r{REASONING_CLOSE}{ANSWER_OPEN}  {ANSWER_CLOSE}", "tags", 0.0),  # empty answer
    (f"{REASONING_OPEN}r{REASONING_CLOSE}{ANSWER_OPEN}B", "tags", 0.0),  # no answer close
    (f"{ANSWER_OPEN}B{ANSWER_CLOSE}{REASONING_OPEN}r{REASONING_CLOSE}", "tags", 0.0),  # wrong order
    (f"{REASONING_OPEN}r{ANSWER_OPEN}B{ANSWER_CLOSE}", "tags", 0.0),  # no reasoning close
    ("THOUGHT 0: look. Final Answer: B", "thought", 1.0),
    ("THOUGHT 0: look. B", "thought", 0.0),
    ("Final Answer: B", "thought", 0.0),
    ("Final Answer: B THOUGHT", "thought", 1.0),  # the authors' rule: both present, any order
    (f"{REASONING_OPEN}r{REASONING_CLOSE}{ANSWER_OPEN}B{ANSWER_CLOSE}", "thought", 0.0),
]


@pytest.mark.parametrize("text, style, expected", FORMAT_CASES)
def test_format_score(text, style, expected):
    assert format_score(text, style) == expected


def test_bad_style_raises():
    with pytest.raises(ValueError, match="style"):
        make_format_reward(style="xml")
    with pytest.raises(ValueError, match="style"):
        extract_answer("x", style="xml")


# ------------------------------------------------------------------------------ the reward callables (TRL contract)
@pytest.fixture(scope="module")
def tokenizer():
    return tiny_chameleon_tokenizer()


def _as_trl(tokenizer, text):
    """What TRL hands a reward: ids, and the text decoded with skip_special_tokens=True."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids, tokenizer.decode(ids, skip_special_tokens=True)


def test_tags_survive_trl_decoding_only_with_processing_class(tokenizer):
    text = f"Let me think. {REASONING_OPEN}I draw it.{REASONING_CLOSE}{ANSWER_OPEN} 2 {ANSWER_CLOSE}</s>"
    ids, decoded = _as_trl(tokenizer, text)
    assert REASONING_OPEN not in decoded  # TRL's decoding removes the special control tokens
    with_tokenizer = make_format_reward(processing_class=tokenizer)
    assert with_tokenizer(["q"], [decoded], [ids]) == [1.0]
    assert format_reward(["q"], [decoded], [ids]) == [0.0]  # no way to see the tags
    assert format_reward(["q"], [decoded], [ids], processing_class=tokenizer) == [1.0]  # call-time kwarg
    accuracy = make_accuracy_reward(processing_class=tokenizer)
    assert accuracy(["q"], [decoded], [ids], answer=["2"]) == [1.0]
    assert accuracy(["q"], [decoded], [ids], answer=["3"]) == [0.0]


def test_accuracy_reward_batch_none_and_columns(tokenizer):
    completions = ["THOUGHT 0: x Final Answer: 50%", "Final Answer: B) blue", "Final Answer: 9", "no answer"]
    out = accuracy_reward(["q"] * 4, completions, answer=["0.5", "B", None, "4"])
    assert out == [1.0, 1.0, None, 0.0]
    custom = make_accuracy_reward(answer_column="Final Answer", name="acc")
    assert custom.__name__ == "acc"
    assert custom(["q"], ["Final Answer: 3"], **{"Final Answer": ["3"]}) == [1.0]
    assert custom(["q"], ["Final Answer: 3"], **{"Final Answer": [""]}) == [None]
    with pytest.raises(KeyError, match="answer_column"):
        accuracy_reward(["q"], ["Final Answer: 3"], solution=["3"])


def test_conversational_completions():
    completions = [[{"role": "assistant", "content": "THOUGHT 0: x Final Answer: C"}]]
    assert accuracy_reward(["q"], completions, answer=["C"]) == [1.0]
    assert format_thought_reward(["q"], completions) == [1.0]


def test_format_reward_names():
    assert format_reward.__name__ == "format_reward"
    assert format_thought_reward.__name__ == "format_thought_reward"
    assert accuracy_reward.__name__ == "accuracy_reward"


def test_warns_once_when_tags_are_invisible(tokenizer, caplog):
    from trl_omni.rewards import _common

    _common._WARNED.clear()
    text = f"{REASONING_OPEN}r{REASONING_CLOSE}{ANSWER_OPEN}2{ANSWER_CLOSE}"
    ids, decoded = _as_trl(tokenizer, text)
    with caplog.at_level("WARNING", logger="trl_omni.rewards._common"):
        assert format_reward(["q"], [decoded], [ids]) == [0.0]
        assert format_reward(["q"], [decoded], [ids]) == [0.0]
        assert accuracy_reward(["q"], [decoded], [ids], answer=["2"]) == [0.0]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("format_reward" in m and "processing_class=tokenizer" in m for m in messages) == 1
    assert sum("make_accuracy_reward(processing_class=tokenizer)" in m for m in messages) == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="trl_omni.rewards._common"):
        make_format_reward(processing_class=tokenizer)(["q"], [decoded], [ids])
    assert not caplog.records


def test_factories_take_custom_tags_as_one_object():
    tags = OutputTags(answer_open="<answer>", answer_close="</answer>", final_answer_marker="ANSWER:")
    accuracy = make_accuracy_reward(tags=tags)
    assert accuracy(["q", "q"], ["<answer>7</answer>", "ANSWER: 8"], answer=["7", "7"]) == [1.0, 0.0]
    think_tags = OutputTags("<think>", "</think>", "<answer>", "</answer>")
    fmt = make_format_reward(tags=think_tags)
    assert fmt(["q", "q"], ["<think>r</think><answer>B</answer>", "<answer>B</answer>"]) == [1.0, 0.0]
    with pytest.raises(TypeError, match=r"make_format_reward\(tags=...\) takes an OutputTags, got dict"):
        make_format_reward(tags={"answer_open": "<answer>"})
