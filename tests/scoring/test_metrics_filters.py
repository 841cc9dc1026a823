"""Overlap metrics equal independent nltk / rouge-score computations; filters give reasons."""

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from trace_inversion.scoring.filters import degeneracy_verdict, empty_verdict, truncation_verdict
from trace_inversion.scoring.metrics import (METRICS, aggregate, corpus_metrics, length_unit, pair_metrics,
                                             tokenizer_name, word_tokens)

PAIRS = [
    ("First, add 3 and 4 to get 7. Then multiply by 7: 49, so 9 mod 10.", "3+4=7. Then 7*7=49, which is 9 mod 10."),
    ("We compute the derivatives and find the roots.", "Computing derivatives, we found the roots quickly."),
    ("totally unrelated words here", "3+4=7"),
]


@pytest.mark.parametrize("hyp,ref", PAIRS)
def test_pair_metrics_match_independent_computation(hyp, ref):
    m = pair_metrics(hyp, ref)
    h, r = word_tokens(hyp), word_tokens(ref)
    assert m["bleu"] == pytest.approx(100 * sentence_bleu([r], h, smoothing_function=SmoothingFunction().method3))
    hs, rs = set(h), set(r)
    inter = len(hs & rs)
    f1 = 0.0 if inter == 0 else 2 * (inter / len(hs)) * (inter / len(rs)) / (inter / len(hs) + inter / len(rs))
    assert m["token_f1"] == pytest.approx(100 * f1)
    scores = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(ref, hyp)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert m[k] == pytest.approx(100 * scores[k].fmeasure)
    assert (m["len_hyp"], m["len_ref"]) == (len(h), len(r))
    assert m["exact_match"] == 0.0


def test_identical_and_aggregate():
    m = pair_metrics("a b c d e", "a b c d e")
    assert m["bleu"] == pytest.approx(100) and m["token_f1"] == 100 and m["rougeL"] == 100
    assert m["exact_match"] == 100
    rows, agg = corpus_metrics([h for h, _ in PAIRS], [r for _, r in PAIRS])
    assert agg["n"] == 3 and agg["bleu"] == pytest.approx(sum(r["bleu"] for r in rows) / 3, abs=1e-4)
    assert agg["exact_match"] == 0 and agg["n_empty_reference"] == 0
    assert aggregate([]) == {"n": 0}


def test_exact_match_compares_stripped_texts():
    trace = "3 + 4 = 7.\nThen 7 * 7 = 49, which is 9 mod 10."
    assert pair_metrics(f"\n  {trace}\n", trace)["exact_match"] == 100
    assert pair_metrics(trace + " ", trace.replace("49", "48"))["exact_match"] == 0
    assert pair_metrics(trace.lower(), trace.upper())["exact_match"] == 0  # no case folding, as in the paper
    rows, agg = corpus_metrics([trace, "something else"], [trace, trace])
    assert [r["exact_match"] for r in rows] == [100, 0] and agg["exact_match"] == 50


def test_empty_references_score_zero_and_stay_in_the_means():
    """As in the paper's evaluate_similarity.py: an empty reference scores 0 (it used to be dropped)."""
    zero = pair_metrics("First, add 3 and 4 to get 7.", "")
    assert all(zero[k] == 0 for k in METRICS) and zero["len_ref"] == 0 and zero["len_hyp"] > 0
    assert all(pair_metrics("", None)[k] == 0 for k in METRICS)  # nothing scores against nothing
    hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    full, agg_full = corpus_metrics(hyps, refs)
    rows, agg = corpus_metrics(hyps + ["an inverted trace", None], refs + ["", None])
    assert agg["n"] == 5 and agg["n_empty_reference"] == 2 and len(rows) == 5
    for k in METRICS:
        assert agg[k] == pytest.approx(agg_full[k] * 3 / 5, abs=1e-3)


def test_lengths_state_their_unit():
    _, agg = corpus_metrics(["a b c"], ["a b c d"])
    assert agg["length_unit"] == length_unit() == f"word tokens ({tokenizer_name()})"
    assert (agg["len_hyp"], agg["len_ref"]) == (3, 4)


def test_filters():
    assert empty_verdict("  ") == (False, "empty") and empty_verdict("x")[0]
    assert truncation_verdict("abc", "length") == (False, "truncated: length cap hit")
    assert truncation_verdict("<think> abc", "stop") == (False, "truncated: no closing </think>")
    assert truncation_verdict("<think>a</think>b", "stop")[0]
    ok, why = degeneracy_verdict("\n".join(["add 1 -> 2"] * 8))
    assert not ok and "repeated 8 times" in why
    ok, why = degeneracy_verdict("the cat sat " * 30)
    assert not ok and "distinct 4-grams" in why
    assert degeneracy_verdict("start 3\nadd 4 -> 7\nmul 7 -> 9\nsub 2 -> 7")[0]
