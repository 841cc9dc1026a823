"""Trace-overlap metrics against ground-truth traces, as the paper defines them (x100).

- BLEU: ``nltk.translate.bleu_score.sentence_bleu`` on word tokens, smoothing method3;
- token F1 over the *sets* of NLTK word tokens;
- ROUGE-1/2/L F-measure with stemming (``rouge-score``);
- mean lengths in word tokens.

Word tokens come from ``nltk.word_tokenize`` when NLTK's punkt data is installed;
offline without it, from the same pipeline (Punkt sentence split, then NLTK's word
tokenizer) with Punkt's default parameters. ``tokenizer_name()`` says which, and the
card records it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence


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


def word_tokens(text: str) -> list[str]:
    return _tokenizer()[1](text or "")


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def pair_metrics(hypothesis: str, reference: str) -> dict:
    """Overlap of one generated trace with its ground-truth trace (all x100 but lengths)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    h, r = word_tokens(hypothesis), word_tokens(reference)
    bleu = sentence_bleu([r], h, smoothing_function=SmoothingFunction().method3) if h and r else 0.0
    hs, rs = set(h), set(r)
    common = len(hs & rs)
    if common == 0:
        f1 = 0.0
    else:
        p, rec = common / len(hs), common / len(rs)
        f1 = 2 * p * rec / (p + rec)
    rg = _rouge().score(reference or "", hypothesis or "")
    return {
        "bleu": 100 * bleu, "token_f1": 100 * f1,
        "rouge1": 100 * rg["rouge1"].fmeasure, "rouge2": 100 * rg["rouge2"].fmeasure, "rougeL": 100 * rg["rougeL"].fmeasure,
        "len_hyp": len(h), "len_ref": len(r),
    }


def aggregate(rows: Sequence[dict]) -> dict:
    """Means over rows of ``pair_metrics`` outputs."""
    if not rows:
        return {"n": 0}
    keys = ["bleu", "token_f1", "rouge1", "rouge2", "rougeL", "len_hyp", "len_ref"]
    out = {"n": len(rows), "tokenizer": tokenizer_name()}
    for k in keys:
        out[k] = round(sum(r[k] for r in rows) / len(rows), 4)
    return out


def corpus_metrics(hypotheses: Sequence[Optional[str]], references: Sequence[Optional[str]]) -> tuple[list[dict], dict]:
    per_row = [pair_metrics(h or "", r or "") for h, r in zip(hypotheses, references) if r]
    return per_row, aggregate(per_row)
