"""The ``build-inverter-data`` pipeline: the attacker's stage 1.

``LoadDataFromDicts >> GenerateSurrogateTraces >> CompressTraces >> FormatInverterSFT``
on the problems: the open surrogate's visible traces, summaries of them in the
target's style, and the inverter's SFT examples. Output folder
``<output.dir>/inverter_data`` (a dataset repo layout, loadable by ``load_dataset``
and by ``trl sft --dataset_name``):

- ``with_summary`` / ``without_summary``: ``messages`` in TRL's conversational
  format (the assistant turn, the trace, is the only part with loss);
- ``traces``: id, problem, surrogate trace/answer, summary (for students);
- ``failures``: rows dropped, with the reason (truncated generation, no summary...);
- ``stats.json`` and the card: counts, failure reasons, the summary style report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from trace_inversion.config import RunConfig
from trace_inversion.io import read_split, split_path, write_json, write_split
from trace_inversion.pipelines.common import (count_reasons, report_stage, retry_stats, crashed_rows, distilabel_cache, mark_finished,
                                             reorder, reuse_finished, stage_fingerprint,
                                              require_models, run_pipeline, step_kwargs)

TRACE_COLUMNS = ["id", "problem", "surrogate_trace", "surrogate_answer", "summary"]


def build_pipeline(cfg: RunConfig, rows: list[dict]):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.sft_format import FormatInverterSFT
    from trace_inversion.steps.summarize import CompressTraces
    from trace_inversion.steps.surrogate_generation import GenerateSurrogateTraces

    require_models(cfg, "surrogate", "compressor")
    n = len(rows)
    mml = cfg.inverter_data.max_model_len
    with Pipeline(name=f"build-inverter-data-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_problems", data=rows, batch_size=256)
        surrogate = GenerateSurrogateTraces(name="surrogate", max_model_len=mml, **step_kwargs(cfg, "surrogate", n))
        compress = CompressTraces(name="compress", style=cfg.inverter_data.summary_style,
                                  prompt_file=cfg.inverter_data.prompt_file, max_model_len=mml,
                                  **step_kwargs(cfg, "compressor", n))
        fmt = FormatInverterSFT(name="format_sft", input_batch_size=256)
        load >> surrogate >> compress >> fmt
    return pipeline


def target_summaries(folder: Optional[str]) -> Optional[list[str]]:
    if not folder:
        return None
    return [r.get("target_summary") for r in read_split(folder, "target")]


def run_build_inverter_data(cfg: RunConfig, rows: list[dict], out_name: str = "inverter_data") -> dict:
    from trace_inversion.style_report import format_report, style_report

    t0 = time.time()
    out_dir = Path(cfg.output.dir) / out_name
    fp = stage_fingerprint(cfg, "build-inverter-data", rows, target_release=cfg.inverter_data.target_release and str(
        split_path(cfg.inverter_data.target_release, "target")))
    done = reuse_finished(out_dir, fp, cfg)
    if done is not None:
        return report_stage(out_name.replace("_", "-"), done, cfg, summary(done))
    result = reorder(run_pipeline(build_pipeline(cfg, rows), cfg, out_name.replace("_", "-")), [r["id"] for r in rows])
    crashed_rows(result, "surrogate_model", "surrogate_error")
    for r in result:
        r["failure"] = r.get("surrogate_error") or r.get("summary_error") or (
            None if r.get("messages_with_summary") else "incomplete row")
    ok = [r for r in result if r["failure"] is None]
    failed = [r for r in result if r["failure"] is not None]
    write_split(out_dir, "with_summary", [{"id": r["id"], "messages": r["messages_with_summary"]} for r in ok])
    write_split(out_dir, "without_summary", [{"id": r["id"], "messages": r["messages_without_summary"]} for r in ok])
    write_split(out_dir, "traces", [{k: r.get(k) for k in TRACE_COLUMNS + ["summary_style", "summary_prompt_sha"]}
                                    for r in ok])
    def failure_row(r):
        return {"id": r["id"], "problem": r["problem"], "surrogate_output": r.get("surrogate_output"),
                "failure": r["failure"]}

    write_split(out_dir, "failures", [failure_row(r) for r in failed],
                like=[dict(failure_row(r), failure="") for r in ok[:1]])
    reports = {"compressor": style_report([r["summary"] for r in ok], [r["surrogate_trace"] for r in ok])}
    real = target_summaries(cfg.inverter_data.target_release)
    if real is not None:
        reports["target"] = style_report(real)
    stats = {
        "rows_in": len(rows), "rows_out": len(ok), "failures": len(failed),
        "failure_reasons": count_reasons(failed, "failure"),
        "summary_style": cfg.inverter_data.summary_style if not cfg.inverter_data.prompt_file else "file",
        "summary_prompt_sha": ok[0]["summary_prompt_sha"] if ok else None,
        "style_report": reports, "seconds": round(time.time() - t0, 2), "output_dir": str(out_dir),
        **retry_stats(cfg, "surrogate", "compressor"),
    }
    write_json(stats, out_dir / "stats.json")
    from trace_inversion.hub_cards.card import write_stage_card

    write_stage_card(out_dir, "build-inverter-data", cfg, stats,
                     {"with_summary": len(ok), "without_summary": len(ok), "traces": len(ok), "failures": len(failed)},
                     extra_sections={"Summary style report": format_report(reports)})
    stats["style_table"] = format_report(reports)
    if not failed:
        mark_finished(out_dir, fp, stats)
    return report_stage(out_name.replace("_", "-"), stats, cfg, summary(stats))


def summary(stats: dict) -> str:
    """The stage's key counts for its console line."""
    return (f"{stats['rows_out']:,} of {stats['rows_in']:,} surrogate traces summarised · "
            f"{stats['failures']:,} failed")
