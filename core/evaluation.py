"""Evaluating a trained student: generate, extract the final answer, score with the
same matcher as the consistency filter.

``score(outputs, references)`` is pure; ``evaluate_model`` generates through the
request cache (vLLM or transformers) and returns per-row results and accuracy; with
several sampling seeds it reports the mean and spread.
"""

from __future__ import annotations

import statistics
from typing import Optional, Sequence

from .answer_matching import answers_match, extract_answer
from .prompts import final_answer_text


def score(outputs: Sequence[Optional[str]], references: Sequence[str]) -> list[dict]:
    rows = []
    for out, ref in zip(outputs, references):
        found = extract_answer(final_answer_text(out))
        verdict = answers_match(ref, found)
        rows.append({"output": out, "extracted": found, "reference": ref, "correct": verdict is True,
                     "verdict": verdict})
    return rows


def summarize(per_seed: dict[str, list[dict]]) -> dict:
    accs = {seed: sum(r["correct"] for r in rows) / max(1, len(rows)) for seed, rows in per_seed.items()}
    vals = list(accs.values())
    return {"accuracy_mean": round(statistics.fmean(vals), 4) if vals else None,
            "accuracy_std": round(statistics.pstdev(vals), 4) if len(vals) > 1 else 0.0,
            "accuracy_per_seed": {k: round(v, 4) for k, v in accs.items()},
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
            scored = score(outs, [str(r[reference_column]) for r in rows])
            for r, s in zip(rows, scored):
                s.update(id=r["id"], seed=seed)
            per_seed[str(seed)] = scored
            all_rows += scored
    finally:
        gen.close()
    return summarize(per_seed), all_rows
