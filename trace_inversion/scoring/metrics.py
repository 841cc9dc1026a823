"""Trace-overlap metrics against ground-truth traces, as the paper computes them (x100).

- BLEU: ``nltk.translate.bleu_score.sentence_bleu`` on word tokens, smoothing method3;
- token F1 over the *sets* of NLTK word tokens;
- ROUGE-1/2/L F-measure with stemming (``rouge-score``);
- exact match: the stripped texts are equal;
- mean lengths (``len_hyp``, ``len_ref``) in NLTK word tokens (``length_unit`` says so;
  the paper counts them in Qwen2.5 tokens, ``scoring.lengths`` in the model's own).

A row whose reference is empty scores 0 on every metric and stays in the means, as in
the paper's ``evaluate_similarity.py`` (dropping it would inflate the scores); the one
difference: there an empty hypothesis "exactly matches" an empty reference, here nothing
scores against an empty reference. ``n_empty_reference`` counts such rows.

Word tokens come from ``nltk.word_tokenize`` when NLTK's punkt data is installed;
offline without it, from the same pipeline (Punkt sentence split, then NLTK's word
tokenizer) with Punkt's default parameters. ``tokenizer_name()`` says which, and the
card records it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

METRICS = ["bleu", "token_f1", "rouge1", "rouge2", "rougeL", "exact_match"]


@lru_cache(maxsize=1)
def _tokenizer():
    import nltk

    try:
        nltk.word_tokenize("probe.")
        return "nltk.word_tokenize", nltk.word_tokenize
    except LookupError:
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        sent, word = PunktSentenceTokenizer(), NLTKWordTokenizer()
        return "punkt-default+NLTKWordTokenizer", lambda t: [w for s in sent.tokenize(t) for w in word.tokenize(s)]


def tokenizer_name() -> str:
    return _tokenizer()[0]


def length_unit() -> str:
    """The unit of ``len_hyp`` / ``len_ref``."""
    return f"word tokens ({tokenizer_name()})"


def word_tokens(text: str) -> list[str]:
    return _tokenizer()[1](text or "")


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def pair_metrics(hypothesis: Optional[str], reference: Optional[str]) -> dict:
    """Overlap of one generated trace with its ground-truth trace (all x100 but the
    lengths, which are in word tokens: ``length_unit()``). An empty reference scores 0."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = (hypothesis or "").strip(), (reference or "").strip()
    h, r = word_tokens(hyp), word_tokens(ref)
    if not ref:
        return dict({m: 0.0 for m in METRICS}, len_hyp=len(h), len_ref=0)
    bleu = sentence_bleu([r], h, smoothing_function=SmoothingFunction().method3) if h and r else 0.0
    hs, rs = set(h), set(r)
    common = len(hs & rs)
    if common == 0:
        f1 = 0.0
    else:
        p, rec = common / len(hs), common / len(rs)
        f1 = 2 * p * rec / (p + rec)
    rg = _rouge().score(ref, hyp)
    return {
        "bleu": 100 * bleu, "token_f1": 100 * f1,
        "rouge1": 100 * rg["rouge1"].fmeasure, "rouge2": 100 * rg["rouge2"].fmeasure, "rougeL": 100 * rg["rougeL"].fmeasure,
        "exact_match": 100.0 if hyp == ref else 0.0,
        "len_hyp": len(h), "len_ref": len(r),
    }


def aggregate(rows: Sequence[dict]) -> dict:
    """Means over rows of ``pair_metrics`` outputs, with the lengths' unit and the
    number of rows whose reference was empty (scored 0)."""
    if not rows:
        return {"n": 0}
    out = {"n": len(rows), "tokenizer": tokenizer_name(), "length_unit": length_unit(),
           "n_empty_reference": sum(1 for r in rows if not r["len_ref"])}
    for k in METRICS + ["len_hyp", "len_ref"]:
        out[k] = round(sum(r.get(k, 0.0) for r in rows) / len(rows), 4)
    return out


def corpus_metrics(hypotheses: Sequence[Optional[str]], references: Sequence[Optional[str]]) -> tuple[list[dict], dict]:
    """Per-row metrics and their means over every pair; a missing hypothesis is empty
    text, a missing or empty reference scores 0 (kept, as in the paper)."""
    per_row = [pair_metrics(h or "", r or "") for h, r in zip(hypotheses, references)]
    return per_row, aggregate(per_row)
