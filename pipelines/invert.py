"""The ``invert`` pipeline: target (problem, answer, summary) -> verified full traces.

``LoadDataFromDicts >> InvertTraces`` on a query-target output (or any dataset with
problem / answer / summary columns). Output folder ``<output.dir>/inversion``:

- ``inverted``: accepted rows (consistent, or unverifiable when policy keeps them),
  with the trace, verdict, reason, number of attempts and per-row overlap metrics;
- ``unfiltered``: the first sample of every row, as an unverified pipeline (the
  paper's) would keep it, for the "unfiltered" student condition;
- ``rejected``: rows without an accepted sample, with the reason;
- ``stats.json`` and the card: counts per reason, resampling rounds, overlap metrics
  (kept and unfiltered) when ground-truth traces exist, and in the toy world the share
  of traces whose every step is right (what answer checking cannot see).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trace_inversion.config import RunConfig
from trace_inversion.data import DataError, validate_rows
from trace_inversion.io import split_path, write_json, write_split
from trace_inversion.pipelines.common import (count_reasons, report_stage, retry_stats, crashed_rows, distilabel_cache, mark_finished,
                                             reorder, reuse_finished, stage_fingerprint,
                                              require_models, run_pipeline, step_kwargs, step_timings)


def load_inversion_rows(cfg: RunConfig) -> list[dict]:
    import polars as pl

    ic = cfg.invert
    src = Path(ic.source) if ic.source else Path(cfg.output.dir) / "target_query"
    if src.is_dir():
        try:
            src = split_path(src, "target")
        except FileNotFoundError:
            src = src / "data" / "target"
    if not src.exists():
        raise DataError([f"no target answers at {src}; fix: run `trace-inversion query-target` first or set "
                         "invert.source"], str(src))
    rows = pl.read_parquet(src).to_dicts() if src.suffix == ".parquet" else pl.read_ndjson(src).to_dicts()
    required = (ic.answer_column,) + ((ic.summary_column,) if ic.with_summary else ())
    rows = validate_rows(rows, "problem", "id", str(src), extra_required=required)
    bad = [f"row {i} (id {r['id']!r}): {ic.answer_column!r} is empty; fix: drop the row or rerun query-target"
           for i, r in enumerate(rows) if not (r.get(ic.answer_column) or "").strip()]
    if bad:
        raise DataError(bad, str(src))
    if cfg.data.limit:
        rows = rows[: cfg.data.limit]
    return rows


def build_pipeline(cfg: RunConfig, rows: list[dict]):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.inversion import InvertTraces

    require_models(cfg, "inverter")
    ic = cfg.invert
    with Pipeline(name=f"invert-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_targets", data=rows, batch_size=256)
        invert = InvertTraces(name="invert", with_summary=ic.with_summary, samples_per_round=ic.samples_per_round,
                              max_attempts=ic.max_attempts, unverifiable=ic.unverifiable,
                              answer_column=ic.answer_column, summary_column=ic.summary_column, base_seed=cfg.seed,
                              max_model_len=ic.max_model_len, **step_kwargs(cfg, "inverter", len(rows)))
        load >> invert
    return pipeline


def toy_step_share(rows: list[dict], trace_key: str) -> float | None:
    """Share of traces whose every step is right (toy world only)."""
    from trace_inversion.toy_world import check_steps, parse_problem

    probs = [(parse_problem(r["problem"], r["id"]), r.get(trace_key)) for r in rows]
    if not probs or any(p is None for p, _ in probs):
        return None
    return round(sum(check_steps(p, t or "")["all_correct"] for p, t in probs) / len(probs), 4)


def run_invert(cfg: RunConfig, rows: list[dict] | None = None) -> dict:
    from trace_inversion.metrics import corpus_metrics, pair_metrics

    t0 = time.time()
    rows = rows if rows is not None else load_inversion_rows(cfg)
    ic = cfg.invert
    out_dir = Path(cfg.output.dir) / "inversion"
    fp = stage_fingerprint(cfg, "invert", rows)
    done = reuse_finished(out_dir, fp, cfg)
    if done is not None:
        return report_stage("invert", done, cfg, summary(done))
    result = reorder(run_pipeline(build_pipeline(cfg, rows), cfg, "invert"), [r["id"] for r in rows])
    crashed_rows(result, "inverter_model", "inversion_reason")
    gt = ic.ground_truth_column
    has_gt = bool(gt) and any(r.get(gt) for r in result)
    for r in result:
        r["inversion_accepted"] = bool(r.get("inversion_accepted"))
        r["n_attempts"] = len(r.get("inversion_attempts") or [])
        r["inversion_attempts"] = json.dumps(r.get("inversion_attempts") or [])
        if has_gt and r.get(gt):
            for k, v in pair_metrics(r.get("inverted_trace") or "", r[gt]).items():
                r[f"overlap_{k}"] = v
    kept = [r for r in result if r["inversion_accepted"]]
    rejected = [r for r in result if not r["inversion_accepted"]]
    write_split(out_dir, "inverted", kept, like=rejected)
    write_split(out_dir, "rejected", rejected, like=kept)
    unfiltered = [{"id": r["id"], "problem": r["problem"], ic.answer_column: r[ic.answer_column],
                   "first_trace": r.get("first_trace"), "first_verdict": r.get("first_verdict")} for r in result
                  if r.get("first_trace")]
    write_split(out_dir, "unfiltered", unfiltered)
    rounds: dict[str, int] = {}
    for r in kept:
        rounds[str(r["n_attempts"])] = rounds.get(str(r["n_attempts"]), 0) + 1
    first = [r.get("first_verdict") for r in result]
    stats = {
        "rows_in": len(rows), "kept": len(kept), "rejected": len(rejected),
        "rejected_reasons": count_reasons(rejected, "inversion_reason"),
        "kept_verdicts": {"consistent": sum(r["inversion_verdict"] is True for r in kept),
                          "unverifiable": sum(r["inversion_verdict"] is None for r in kept)},
        "first_sample": {"consistent": sum(v is True for v in first), "inconsistent": sum(v is False for v in first),
                         "unverifiable": sum(v is None for v in first)},
        "attempts_of_kept_rows": rounds,
        "with_summary": ic.with_summary, "max_attempts": ic.max_attempts,
        "seconds": round(time.time() - t0, 2), "output_dir": str(out_dir),
    }
    if has_gt:
        with_gt = [r for r in result if r.get(gt)]
        stats["overlap_kept"] = corpus_metrics([r["inverted_trace"] for r in kept if r.get(gt)],
                                               [r[gt] for r in kept if r.get(gt)])[1]
        stats["overlap_unfiltered"] = corpus_metrics([r.get("first_trace") for r in with_gt],
                                                     [r[gt] for r in with_gt])[1]
    stats["inverter_timings"] = step_timings(cfg, "invert")
    stats.update(retry_stats(cfg, "invert"))
    steps_kept = toy_step_share(kept, "inverted_trace")
    if steps_kept is not None:
        stats["toy_all_steps_correct"] = {"kept": steps_kept, "unfiltered": toy_step_share(result, "first_trace")}
    write_json(stats, out_dir / "stats.json")
    from trace_inversion.hub_cards.card import write_stage_card

    write_stage_card(out_dir, "invert", cfg, stats,
                     {"inverted": len(kept), "unfiltered": len(unfiltered), "rejected": len(rejected)})
    if not any((r.get("inversion_reason") or "").startswith("internal error") for r in rejected):
        mark_finished(out_dir, fp, stats)
    return report_stage("invert", stats, cfg, summary(stats))


def summary(stats: dict) -> str:
    """The stage's key counts for its console line."""
    return (f"{stats['kept']:,} of {stats['rows_in']:,} traces kept · {stats['rejected']:,} rejected · first sample "
            f"consistent {stats['first_sample']['consistent']:,}")
