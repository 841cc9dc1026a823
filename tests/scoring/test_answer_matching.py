"""The one answer matcher, on tricky answers. None (cannot verify) is distinct from False."""

import pytest

from trace_inversion.scoring.answer_matching import answers_match, consistency_verdict, extract_answer, last_boxed


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


# ----------------------------------------------------------------------------- realistic corpus
# tests/fixtures/answer_cases.py: 245 cases written from real model output formats
# before the matcher was rewritten (the old matcher agreed on 54.3% of them and gave 67
# false "inconsistent" verdicts on equivalent forms), plus 45 held-out cases written after
# it, without running it on them first: on its first run the new matcher agreed on 41/45
# (91.1%), with one false "inconsistent" (an answer followed by ", where f(-3) = -4");
# those four were then fixed. Then 12 probes (PROBES): 2 found by ad-hoc probing, 10
# written with them before running the matcher; 8 of those 10 were right on the first run
# (2 false "inconsistent" on plain-text traces: "x = 3 or x = -1", a confirming check
# after the answer), then fixed. All three sets are asserted here.

import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from answer_cases import CASES, HELD_OUT, PROBES  # noqa: E402

from trace_inversion.scoring import answer_matching as am  # noqa: E402
from trace_inversion.scoring.answer_matching import METHODS, extract_final_answer  # noqa: E402

ALL_CASES = CASES + HELD_OUT + PROBES


def _disagreements(cases):
    out = []
    for i, (kind, ref, cand, expected, note) in enumerate(cases):
        verdict, why = consistency_verdict(ref, cand)
        if verdict is not expected:
            out.append((i, kind, note, expected, verdict, why))
    return out


def test_corpus_is_realistic_and_large():
    assert len(CASES) >= 150 and len(HELD_OUT) >= 40
    kinds = {c[0] for c in ALL_CASES}
    assert {"gpt", "r1", "target", "math", "mc", "bare", "units", "percent", "degrees", "sep", "sets", "text",
            "count"} <= kinds
    verdicts = [c[3] for c in ALL_CASES]
    assert verdicts.count(False) >= 40 and verdicts.count(None) >= 5  # not only "consistent" cases


def test_corpus_agreement():
    bad = _disagreements(ALL_CASES)
    for b in bad:
        print("DISAGREES", b)
    rate = 1 - len(bad) / len(ALL_CASES)
    print(f"agreement {rate:.1%} on {len(ALL_CASES)} cases")
    assert rate >= 0.97


def test_no_false_inconsistent_on_equivalent_forms():
    false_inconsistent = [b for b in _disagreements(ALL_CASES) if b[3] is True and b[4] is False]
    assert false_inconsistent == []


def test_same_verdicts_in_worker_threads():
    """math-verify's signal timeouts only work in the main thread; in a worker thread
    (Ray actors, thread pools) the verdicts must be the same, not all "cannot verify"."""
    cases = [c for c in ALL_CASES if c[0] in ("math", "sets", "bare")]
    for f in (am.extract_final_answer, am._math_verdict, am._mv_parse, am._mv_extract_guarded):
        f.cache_clear()
    out = {}
    t = threading.Thread(target=lambda: out.update(v=[consistency_verdict(c[1], c[2])[0] for c in cases]))
    t.start()
    t.join(120)
    assert out["v"] == [c[3] for c in cases]


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("text,answer,method", [
    ("<think>\nmaybe \\boxed{5}\n\nWait, let me recheck: 3 + 4 = 7.\n</think>\n\nThe answer is $\\boxed{7}$.",
     "7", "boxed"),
    ("First guess: \\boxed{12}. Hmm, wait, that double counts. Total 10.\n\nSo the final answer is 10.",
     "10", "final_phrase"),  # a later phrase beats an earlier box
    ("So the answer is 42. Let me check if the answer is correct: 6 * 7 = 42. Yes, the answer is correct.",
     "42", "final_phrase"),
    ("**Answer:** $\\frac{3}{4}$", "\\frac{3}{4}", "final_phrase"),
    ("### Answer\n17", "17", "final_phrase"),
    ("Final answer: 5 cm", "5 cm", "final_phrase"),
    ("Hence the correct option is **(C)**.", "(C)", "choice"),
    ("$\\boxed{\\text{(C)}}$", "\\text{(C)}", "boxed"),
    ("C)", "C)", "choice"),
    ("**(B)** is correct since the others are negative.", "B", "choice"),
    ("1+2x", "1+2x", "expression"),  # a bare expression is taken whole
    ("(x-1)(x+1)", "(x-1)(x+1)", "expression"),
    ("\\sqrt{12}", "\\sqrt{12}", "expression"),
    ("$\\frac{3}{4}$", "\\frac{3}{4}", "expression"),
    ("Paris", "Paris", "text"),
    ("So the distance is $\\sqrt{13}$.", "\\sqrt{13}", "latex"),
    ("Thus $a + b = 7 + 3 = 10$.", "10", "latex"),  # the last side of a chain
    ("so $x = \\sqrt{2} \\approx 1.414$.", "x = \\sqrt{2}", "latex"),  # the exact side
    ("There are 3 solutions (1, 5, 9).", "3 solutions: 1, 5, 9", "expression"),
    ("So the product is **42**.", "42", "expression"),
    ("start 3\nadd 4 -> 7", "7", "expression"),
    ("Hmm, 5? Wait, let me check again: 3 + 4 = 7, not 5.", "7", "expression"),  # the rejected value
    ("So n = 6. Let me verify: 6 * 7 / 2 = 21 ✓", "6", "expression"),  # a check that confirms
    ("So it's 5. Let me check: 3 + 4 = 7. Hmm, that's wrong, so 7.", "7", "expression"),  # one that corrects
    ("x^2 = 9, so x = 3 or x = -3.", "x = 3, x = -3", "expression"),
    ("I am not sure how to proceed.", None, "none"),
    ("<think>\nI think it is 5 but", "5", "expression"),  # a trace's own last value (evaluation refuses it)
    (None, None, "none"),
])
def test_extract_final_answer(text, answer, method):
    assert extract_final_answer(text) == (answer, method)
    assert method in METHODS


def test_extraction_methods_on_the_corpus():
    methods = {extract_final_answer(c[2])[1] for c in ALL_CASES}
    assert methods == set(METHODS)


# ----------------------------------------------------------------------------- timeouts and cost


def test_costly_inputs_are_refused_not_computed():
    # A power tower would be evaluated inside one C call no deadline can interrupt.
    assert answers_match("10^{10^{10^{10}}}", "2^{2^{2^{2^{2^{2}}}}}") is None


@pytest.mark.parametrize("in_thread", [False, True])
def test_a_slow_comparison_is_cannot_verify_not_false(in_thread, monkeypatch):
    import time

    def slow(*args):
        time.sleep(3)
        return False

    monkeypatch.setattr(am, "_mv_compare", slow)
    am._math_verdict.cache_clear()
    monkeypatch.setattr(am, "_abandoned", 0)
    out = {}

    def run():
        t0 = time.perf_counter()
        out["v"] = answers_match("\\sqrt{8}", "2\\sqrt{2}", timeout=1)
        out["s"] = time.perf_counter() - t0

    if in_thread:
        t = threading.Thread(target=run)
        t.start()
        t.join(10)
    else:
        run()
    am._math_verdict.cache_clear()
    assert out["v"] is None and out["s"] < 2.5


def test_main_thread_deadline_leaves_no_timer_behind():
    import signal

    am._math_verdict.cache_clear()
    handler, (delay, _) = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    assert answers_match("\\sqrt{8}", "2\\sqrt{2}") is True
    # the handler is restored, and a timer someone else set (pytest-timeout) is given back
    assert signal.getsignal(signal.SIGALRM) is handler
    after, interval = signal.getitimer(signal.ITIMER_REAL)
    assert interval == 0.0 and (after == 0.0 if delay == 0.0 else 0 < after <= delay)


@pytest.mark.parametrize("given,found,expected", [
    ("50\\%", "50", True), ("50\\%", "0.5", True), ("\\frac{1}{3}", "0.333", True), ("\\frac{1}{3}", "0.3", None),
    ("30^\\circ", "\\frac{\\pi}{6}", True), ("50 mm", "5 cm", True), ("1\\,000", "1000", True),
    ("12 345", "12345", True),
    ("yes", "no", False), ("Tuesday", "Wednesday", None), ("\\textbf{(D) }42", "42", True), ("AC", "CA", True),
    ("3", "3 solutions (1, 5, 9)", True), ("\\{1, 5, 9\\}", "3 solutions (1, 5, 9)", True),
    ("4", "3 solutions (1, 5, 9)", False), ("2\\frac{1}{4}", "\\frac{9}{4}", True), ("10!", "3628800", True),
])
def test_answers_match_decisions(given, found, expected):
    assert answers_match(given, found) is expected


def test_consistency_with_a_pre_extracted_target():
    response = "The perimeter is $24$ cm.\n\n**Answer:** 24 cm"
    target = extract_final_answer(response)
    assert target == ("24 cm", "final_phrase")
    assert consistency_verdict(response, "so it is 24", target=target) == consistency_verdict(response, "so it is 24")
    assert consistency_verdict("ignored", "so it is 24", target=(None, "none"))[0] is None
