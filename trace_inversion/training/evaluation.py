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

from trace_inversion.scoring.answer_matching import answers_match, extract_final_answer
from trace_inversion.prompts import STUDENT_USER_TEMPLATE, fill, final_answer_text
from trace_inversion.toy.world import REFERENCE_COLUMN


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
                   reference_column: str = REFERENCE_COLUMN,
                   user_template: str = STUDENT_USER_TEMPLATE) -> tuple[dict, list[dict]]:
    """Generate an answer for each row (once per seed) and score it. The user turn is
    ``user_template`` filled with the problem: the template the student was trained on
    (``students.user_template_file``; default the bare problem)."""
    from trace_inversion.models import CachedModel, llm_from_config

    gen = CachedModel(llm_from_config(model_cfg), cache)
    per_seed: dict[str, list[dict]] = {}
    all_rows = []
    try:
        for seed in seeds:
            results = gen.generate([[{"role": "user", "content": fill(user_template, problem=r["problem"])}]
                                    for r in rows], [seed] * len(rows))
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


def add_parser(subparsers) -> None:
    """The ``evaluate`` command."""
    from trace_inversion.cli_options import add_force

    p = subparsers.add_parser("evaluate", help="pipeline: evaluate a trained student on a benchmark",
                              description="Generate with a model (transformers or vLLM) on a benchmark (toy, a local "
                                          "file, or a Hub dataset id such as HuggingFaceH4/MATH-500), extract the "
                                          "final answer and score it with the consistency filter's matcher; several "
                                          "seeds give mean and spread.")
    p.add_argument("--model", required=True)
    p.add_argument("--benchmark", default="toy", help="toy | FILE | Hub id")
    p.add_argument("--split", default="test")
    p.add_argument("--subset", help="Hub dataset subset (config name), e.g. main for openai/gsm8k")
    p.add_argument("--problem-column", default="problem")
    p.add_argument("--answer-column", default="answer")
    p.add_argument("--id-column", default="unique_id")
    p.add_argument("--limit", type=int)
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seeds", type=int, default=1, help="sampling seeds (use with --temperature > 0)")
    p.add_argument("--toy-seed", type=int, default=0)
    p.add_argument("--toy-n-train", type=int, default=2000)
    p.add_argument("--toy-n-ops", type=int, default=6)
    p.add_argument("--user-template", metavar="FILE",
                   help="the students' user message template they were trained with (students.user_template_file; "
                        "placeholder {problem}); default: the bare problem")
    p.add_argument("--output", "-o", required=True)
    add_force(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.models.cache import RequestCache
    from trace_inversion.cli_options import claim, print_json
    from trace_inversion.config import DataConfig, ModelConfig
    from trace_inversion.data.loading import load_rows
    from trace_inversion.errors import UserError
    from trace_inversion.data.io import write_json, write_split
    from trace_inversion.prompts import read_template

    user_template = STUDENT_USER_TEMPLATE
    if args.user_template:  # checked before any data or model is loaded
        user_template, problem = read_template(args.user_template, ("problem",))
        if problem:
            raise UserError(f"--user-template: {problem}")
    if args.benchmark == "toy":
        data = DataConfig(toy={"seed": args.toy_seed, "n_train": args.toy_n_train, "n_test": args.limit or 500,
                               "n_ops": args.toy_n_ops})
        rows = load_rows(data, "test")
        ref = REFERENCE_COLUMN
    else:
        data = DataConfig(source=args.benchmark, split=args.split, subset=args.subset,
                          problem_column=args.problem_column, id_column=args.id_column, limit=args.limit)
        rows = load_rows(data, args.split)
        ref = args.answer_column
        missing = [r["id"] for r in rows if r.get(ref) in (None, "")]
        if missing:
            raise UserError(f"{len(missing)} rows lack {ref!r} (first: {missing[0]}); fix: set --answer-column")
    sampling = {"temperature": args.temperature, "top_p": 1.0 if args.temperature == 0 else 0.95, "top_k": -1,
                "repetition_penalty": 1.0, "max_new_tokens": args.max_new_tokens}
    mcfg = ModelConfig(backend=args.backend, model=args.model, sampling=sampling)
    out = claim(args.output, args)
    seeds = list(range(args.seeds)) if args.seeds > 1 else [None]
    summary, per_row = evaluate_model(mcfg, rows, RequestCache(out / "requests.sqlite"), seeds, reference_column=ref,
                                      user_template=user_template)
    write_split(out, "results", per_row)
    write_json(summary, out / "accuracy.json")
    print_json(summary)
    return 0
