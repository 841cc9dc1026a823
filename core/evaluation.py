"""Evaluating a trained student: generate, extract the final answer, score with the
same matcher as the consistency filter.

``score(outputs, references)`` is pure; ``evaluate_model`` generates through the
request cache (vLLM or transformers) and returns per-row results and accuracy; with
several sampling seeds it reports the mean and spread.

Truncation: an output that opens ``<think>`` and never closes it was cut off inside its
reasoning; it has no answer, scores as wrong (whatever number its reasoning last wrote)
and is flagged ``truncated``, as is an output that hit the length cap (``finish_reason
== "length"``; such an output that did close its reasoning is still scored on the answer
it wrote). The summary reports ``truncation_rate`` next to the accuracy.
"""

from __future__ import annotations

import statistics
from typing import Optional, Sequence

from .answer_matching import answers_match, extract_final_answer
from .prompts import final_answer_text


def is_truncated(output: Optional[str], finish_reason: Optional[str] = None) -> bool:
    """Cut off: reasoning opened and never closed, or the length cap hit."""
    if finish_reason == "length":
        return True
    return output is not None and "<think>" in output and "</think>" not in output


def score(outputs: Sequence[Optional[str]], references: Sequence[str],
          finish_reasons: Optional[Sequence[Optional[str]]] = None) -> list[dict]:
    """One row per output: the extracted answer and how it was found, the verdict
    (True / False / None = cannot verify), ``correct`` (verdict is True) and ``truncated``."""
    rows = []
    for i, (out, ref) in enumerate(zip(outputs, references)):
        finish = finish_reasons[i] if finish_reasons is not None else None
        answer_text = final_answer_text(out)
        found, method = extract_final_answer(answer_text) if answer_text is not None else (None, "none")
        verdict = answers_match(ref, found)
        rows.append({"output": out, "extracted": found, "answer_method": method, "reference": ref,
                     "correct": verdict is True, "verdict": verdict, "truncated": is_truncated(out, finish)})
    return rows


def summarize(per_seed: dict[str, list[dict]]) -> dict:
    accs = {seed: sum(r["correct"] for r in rows) / max(1, len(rows)) for seed, rows in per_seed.items()}
    truncs = {seed: sum(bool(r.get("truncated")) for r in rows) / max(1, len(rows)) for seed, rows in per_seed.items()}
    vals = list(accs.values())
    return {"accuracy_mean": round(statistics.fmean(vals), 4) if vals else None,
            "accuracy_std": round(statistics.pstdev(vals), 4) if len(vals) > 1 else 0.0,
            "accuracy_per_seed": {k: round(v, 4) for k, v in accs.items()},
            "truncation_rate": round(statistics.fmean(truncs.values()), 4) if truncs else None,
            "truncation_rate_per_seed": {k: round(v, 4) for k, v in truncs.items()},
            "n": len(next(iter(per_seed.values()), []))}


def evaluate_model(model_cfg, rows: list[dict], cache, seeds: Sequence[Optional[int]] = (None,),
                   reference_column: str = "reference_answer") -> tuple[dict, list[dict]]:
    """Generate an answer for each row (once per seed) and score it."""
    from .generation import Generator

    gen = Generator(model_cfg, cache)
    per_seed: dict[str, list[dict]] = {}
    all_rows = []
    try:
        for seed in seeds:
            results = gen.generate([[{"role": "user", "content": r["problem"]}] for r in rows], [seed] * len(rows))
            outs = [res.response["answer"] if res.ok else None for res in results]
            finishes = [res.response.get("finish_reason") if res.ok else None for res in results]
            scored = score(outs, [str(r[reference_column]) for r in rows], finishes)
            for r, s in zip(rows, scored):
                s.update(id=r["id"], seed=seed)
            per_seed[str(seed)] = scored
            all_rows += scored
    finally:
        gen.close()
    return summarize(per_seed), all_rows
