"""The one answer matcher, on tricky answers. None (cannot verify) is distinct from False."""

import pytest

from trace_inversion.answer_matching import answers_match, consistency_verdict, extract_answer, last_boxed


@pytest.mark.parametrize("text,expected", [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),  # last, nested braces
    ("The final answer is 42.", "42"),
    ("Answer: (C)", "(C)"),
    ("3 add 4 -> 7\n7 mul 7 -> 9", "9"),  # toy surrogate notation
    ("3+4=7\n7*7=9", "9"),  # toy target notation
    ("we get 12 apples and 3 pears", "3"),
    ("", None),
    ("no numbers here", None),
    ("\\boxed{unclosed", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("given,found,expected", [
    ("\\frac{1}{2}", "0.5", True),           # fraction vs decimal
    ("\\boxed{\\dfrac{3}{4}}", "0.75", True),
    ("0.5", "\\frac{1}{3}", False),
    ("7", "7.0", True),
    ("1,000", "1000", True),                 # thousands separator
    ("3 \\text{ cm}", "3", True),            # units
    ("10\\%", "0.1", True),
    ("x+1", "1+x", True),
    ("\\sqrt{2}", "2^{1/2}", True),
    ("7", "8", False),
    ("(C)", "C", True),                      # multiple choice
    ("B", "(b)", True),
    ("A", "D", False),
    ("A", "42", None),                       # letter vs number: not comparable
    ("Paris", "paris.", True),               # non-math, normalised string
    ("Paris", "London", None),               # non-math, different: cannot verify
    ("", "7", None),
    (None, "7", None),
    ("7", None, None),
])
def test_answers_match(given, found, expected):
    assert answers_match(given, found) is expected


def test_consistency_verdicts_and_reasons():
    assert consistency_verdict("The answer is \\boxed{7}.", "start 3\nadd 4 -> 7") == (True, "consistent")
    v, why = consistency_verdict("The answer is \\boxed{7}.", "start 3\nadd 5 -> 8")
    assert v is False and why.startswith("inconsistent: trace reaches '8'")
    v, why = consistency_verdict("The answer is \\boxed{7}.", "I have no idea")
    assert v is None and why == "cannot verify: no answer found in the trace"
    v, why = consistency_verdict("", "x = 3")
    assert v is None and "no answer in the target" in why


def test_last_boxed_variants():
    assert last_boxed("\\fbox{5}") == "5"
    assert last_boxed("\\boxed {a}") == "a"
    assert last_boxed(None) is None
