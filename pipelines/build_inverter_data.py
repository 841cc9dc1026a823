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
- ``stats.json`` and the card: counts, failure reasons, the summary style report, and
  the lengths of the surrogate's and the compressor's generations (``lengths``: cap-hit
  rate, median and p90, in each model's own tokens where known, else word tokens).
"""

from __future__ import annotations

from typing import Optional

from trace_inversion.pipelines import STAGES
from trace_inversion.config import RunConfig
from trace_inversion.data.io import read_split, split_path
from trace_inversion.pipelines.common import (count_reasons, crashed_rows, distilabel_cache, reorder, require_models,
                                             generation_lengths, retry_stats, run_pipeline, step_kwargs,
                                             surrogate_lengths)
from trace_inversion.pipelines.stage import Output, Stage
from trace_inversion.prompts import stage_templates

TRACE_COLUMNS = ["id", "problem", "surrogate_trace", "surrogate_answer", "summary"]
FINISH_COLUMNS = ["surrogate_finish_reason", "surrogate_output_tokens", "summary_finish_reason"]


def templates(cfg: RunConfig) -> dict:
    """The compressor's prompt and the inverter's format (the SFT examples are written
    as ``invert`` will query the inverter)."""
    return stage_templates(cfg, "compressor", "inverter_user", "inverter_system")


def build_pipeline(cfg: RunConfig, rows: list[dict], prompts: dict | None = None):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.sft_format import FormatInverterSFT
    from trace_inversion.steps.summarize import CompressTraces
    from trace_inversion.steps.surrogate_generation import GenerateSurrogateTraces

    require_models(cfg, "surrogate", "compressor")
    prompts = templates(cfg) if prompts is None else prompts
    system = prompts.get("inverter_system")
    n = len(rows)
    mml = cfg.inverter_data.max_model_len
    with Pipeline(name=f"build-inverter-data-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_problems", data=rows, batch_size=256)
        surrogate = GenerateSurrogateTraces(name="surrogate", max_model_len=mml, **step_kwargs(cfg, "surrogate", n))
        compress = CompressTraces(name="compress", style=cfg.inverter_data.summary_style,
                                  prompt_file=cfg.inverter_data.prompt_file, prompt=prompts["compressor"].text,
                                  max_model_len=mml, **step_kwargs(cfg, "compressor", n))
        fmt = FormatInverterSFT(name="format_sft", input_batch_size=256, user_template=prompts["inverter_user"].text,
                                system_prompt=system.text if system else None)
        load >> surrogate >> compress >> fmt
    return pipeline


def target_summaries(folder: Optional[str]) -> Optional[list[str]]:
    if not folder:
        return None
    return [r.get("target_summary") for r in read_split(folder, "target")]


def run_build_inverter_data(cfg: RunConfig, rows: list[dict], out_name: str = STAGES["build-inverter-data"]["folder"]) -> dict:
    from trace_inversion.scoring.style_report import format_report, style_report

    release = cfg.inverter_data.target_release
    stage = Stage(cfg, "build-inverter-data", rows, folder=out_name, summary=summary, templates=templates(cfg),
                  inputs={"target_release": release and str(split_path(release, "target"))})

    def produce() -> Output:
        result = reorder(run_pipeline(build_pipeline(cfg, rows, stage.templates), cfg, stage.label),
                         [r["id"] for r in rows])
        crashed_rows(result, "surrogate_model", "surrogate_error")
        for r in result:
            r["failure"] = r.get("surrogate_error") or r.get("summary_error") or (
                None if r.get("messages_with_summary") else "incomplete row")
        ok = [r for r in result if r["failure"] is None]
        failed = [r for r in result if r["failure"] is not None]

        def failure_row(r):
            return {"id": r["id"], "problem": r["problem"], "surrogate_output": r.get("surrogate_output"),
                    "failure": r["failure"], "surrogate_finish_reason": r.get("surrogate_finish_reason")}

        reports = {"compressor": style_report([r["summary"] for r in ok], [r["surrogate_trace"] for r in ok])}
        real = target_summaries(release)
        if real is not None:
            reports["target"] = style_report(real)
        stats = {
            "rows_in": len(rows), "rows_out": len(ok), "failures": len(failed),
            "failure_reasons": count_reasons(failed, "failure"),
            "summary_style": cfg.inverter_data.summary_style if not cfg.inverter_data.prompt_file else "file",
            "summary_prompt_sha": ok[0]["summary_prompt_sha"] if ok else None,
            "style_report": reports, **retry_stats(cfg, "surrogate", "compressor"),
            "lengths": dict(surrogate_lengths(cfg, result), compressor=generation_lengths(
                cfg, "compressor", [r.get("summary") for r in result], [r.get("summary_finish_reason") for r in result],
                "summary")),
        }
        return Output(
            splits={"with_summary": [{"id": r["id"], "messages": r["messages_with_summary"]} for r in ok],
                    "without_summary": [{"id": r["id"], "messages": r["messages_without_summary"]} for r in ok],
                    "traces": [{k: r.get(k) for k in TRACE_COLUMNS + ["summary_style", "summary_prompt_sha"]
                                + FINISH_COLUMNS} for r in ok],
                    "failures": [failure_row(r) for r in failed]},
            like={"failures": [dict(failure_row(r), failure="") for r in ok[:1]]},
            stats=stats, sections={"Summary style report": format_report(reports)},
            finished=not failed, console={"style_table": format_report(reports)})

    return stage.run(produce)


def summary(stats: dict) -> str:
    """The stage's key counts for its console line."""
    return (f"{stats['rows_out']:,} of {stats['rows_in']:,} surrogate traces summarised · "
            f"{stats['failures']:,} failed")


def add_parser(subparsers) -> None:
    """The ``build-inverter-data`` command."""
    from trace_inversion.cli_options import add_config_args

    p = subparsers.add_parser("build-inverter-data",
                              help="pipeline: surrogate traces + simulated summaries -> inverter SFT data",
                              description="Run the surrogate on the problems, compress its traces into summaries in "
                                          "the target's style (bubbles/recap/prompt file), and write the inverter's "
                                          "SFT data with and without summaries, plus a summary style report.")
    add_config_args(p)
    p.add_argument("--split", help="input split (default: the config's data.split; toy: train, test or attacker)")
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import claim, config_from, print_json
    from trace_inversion.data.loading import load_rows

    cfg = config_from(args, roles=("surrogate", "compressor"))
    claim(cfg.output.dir, args)
    stats = run_build_inverter_data(cfg, load_rows(cfg.data, args.split))
    table = stats.pop("style_table")
    print_json(stats)
    print("\nSummary style report:\n" + table)
    return 0
