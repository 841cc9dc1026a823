"""Overlap metrics equal independent nltk / rouge-score computations; filters give reasons."""

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from trace_inversion.scoring.filters import degeneracy_verdict, empty_verdict, truncation_verdict
from trace_inversion.scoring.metrics import aggregate, corpus_metrics, pair_metrics, word_tokens

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


def test_identical_and_aggregate():
    m = pair_metrics("a b c d e", "a b c d e")
    assert m["bleu"] == pytest.approx(100) and m["token_f1"] == 100 and m["rougeL"] == 100
    rows, agg = corpus_metrics([h for h, _ in PAIRS] + [None], [r for _, r in PAIRS] + [None])
    assert agg["n"] == 3 and agg["bleu"] == pytest.approx(sum(r["bleu"] for r in rows) / 3, abs=1e-4)
    assert aggregate([]) == {"n": 0}


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
