"""The ``student-data`` pipeline: the paper's student conditions from stage outputs.

Joins, by row id, the target-query output (answers, summaries, and target traces when
the target is open), the surrogate's traces on the same problems, and the inversion
output (first samples and verified traces); then one distilabel branch per condition
(``FormatStudentSFT``). Output ``<output.dir>/student_data`` with one config per
condition (``messages`` in TRL's conversational format) and ``stats.json``.

Beside each condition, ``<condition>_matched`` keeps only the rows every non-empty
condition shares (``students.matched``), so accuracies compare conditions on the same
problems rather than mixing data quantity with quality. The folder holds exactly this
run's configs: those of a condition that came out empty (or was not asked for) are
removed, with their card entries. The card and ``stats.json`` give every condition's
row count and, for an empty one, why.

``run_surrogate_on_targets`` runs the surrogate on the target's own problems
(``student-data --run-surrogate`` or ``students.run_surrogate``), the data of the
``surrogate_traces`` condition: ``<output.dir>/surrogate_on_targets`` with ``traces``
and ``failures``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from trace_inversion.pipelines import STAGES
from trace_inversion.config import RunConfig
from trace_inversion.data.io import read_split
from trace_inversion.pipelines.common import (count_reasons, crashed_rows, distilabel_cache, reorder, require_models,
                                             retry_stats, run_distiset, run_pipeline, step_kwargs, surrogate_lengths)
from trace_inversion.pipelines.stage import Output, Stage
from trace_inversion.prompts import stage_templates

DEFAULT_CONDITIONS = ["answer_only", "summary_answer", "surrogate_traces", "inverted_unfiltered",
                      "inverted_verified", "target_traces"]
# Conditions built here on top of FormatStudentSFT's: name -> (its condition, reasoning column).
# inverted_with_unverifiable: verified traces plus the invert stage's `unverifiable` ones, only
# when asked (invert.unverifiable_to_students or --conditions); inverted_verified never has them.
# inverted_step_verified: the verified traces of a second inversion whose verifiers include a
# step-level one (e.g. `invert.verifiers: [answer, steps]`), given as `step_verified_dir`
# (CLI: --step-verified FOLDER); with it, inverted_verified is the answer-verified condition.
DERIVED_CONDITIONS = {"inverted_with_unverifiable": ("inverted_verified", "kept_trace"),
                      "inverted_step_verified": ("inverted_verified", "step_verified_trace")}


def join_sources(target_dir: Path, surrogate_dir: Optional[Path], inversion_dir: Optional[Path],
                 step_verified_dir: Optional[Path] = None) -> list[dict]:
    rows = {r["id"]: dict(r) for r in read_split(target_dir, "target")}
    if surrogate_dir is not None:
        for r in read_split(surrogate_dir, "traces"):
            if r["id"] in rows:
                rows[r["id"]].update(surrogate_trace=r["surrogate_trace"], surrogate_answer=r["surrogate_answer"])
    if inversion_dir is not None:
        for r in read_split(inversion_dir, "unfiltered"):
            if r["id"] in rows:
                rows[r["id"]]["first_trace"] = r["first_trace"]
        for r in read_split(inversion_dir, "inverted"):  # verified traces only
            if r["id"] in rows:
                rows[r["id"]]["inverted_trace"] = rows[r["id"]]["kept_trace"] = r["inverted_trace"]
        if (inversion_dir / "data" / "unverifiable").is_dir():
            for r in read_split(inversion_dir, "unverifiable"):
                if r["id"] in rows and not rows[r["id"]].get("kept_trace"):
                    rows[r["id"]]["kept_trace"] = r["inverted_trace"]
    if step_verified_dir is not None:
        for r in read_split(step_verified_dir, "inverted"):
            if r["id"] in rows:
                rows[r["id"]]["step_verified_trace"] = r["inverted_trace"]
    keep = ["id", "problem", "target_answer", "target_summary", "target_trace", "surrogate_trace",
            "surrogate_answer", "first_trace", "inverted_trace", "kept_trace", "step_verified_trace"]
    return [{k: r.get(k) for k in keep} for r in rows.values()]


def run_student_data(cfg: RunConfig, target_dir: Path, surrogate_dir: Optional[Path] = None,
                     inversion_dir: Optional[Path] = None, conditions: Optional[list[str]] = None,
                     stage: str = STAGES["student-data"]["folder"], step_verified_dir: Optional[Path] = None) -> dict:
    """Write ``<output.dir>/<stage>`` with one config per condition (see the module doc)."""
    conditions = list(conditions or DEFAULT_CONDITIONS)
    if cfg.invert.unverifiable_to_students and "inverted_verified" in conditions \
            and "inverted_with_unverifiable" not in conditions:
        conditions.append("inverted_with_unverifiable")
    if step_verified_dir is not None and "inverted_step_verified" not in conditions:
        conditions.append("inverted_step_verified")
    rows = join_sources(Path(target_dir), surrogate_dir and Path(surrogate_dir), inversion_dir and Path(inversion_dir),
                        step_verified_dir and Path(step_verified_dir))
    # no model calls: --retry-failed has nothing to resend here
    run = Stage(cfg, "student-data", rows, folder=stage, summary=summary, inputs={"conditions": conditions},
                templates=stage_templates(cfg, "student_user", "student_response"), calls_models=False)
    return run.run(lambda: student_output(cfg, run, conditions, surrogate_dir, inversion_dir))


def student_output(cfg: RunConfig, stage: Stage, conditions: list[str], surrogate_dir, inversion_dir) -> Output:
    """One distilabel branch per condition, then the ``_matched`` variants."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.student_format import FormatStudentSFT

    rows = stage.rows
    fmt = {"user_template": stage.template("student_user"), "response_template": stage.template("student_response")}
    with Pipeline(name=f"student-data-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_rows", data=rows, batch_size=512)
        for c in conditions:
            base, col = DERIVED_CONDITIONS.get(c, (c, None))
            load >> FormatStudentSFT(name=f"format_{c}", condition=base, reasoning_column=col, input_batch_size=512,
                                     **fmt)
    distiset = run_distiset(pipeline, cfg, stage.label)
    counts, kept_by = {}, {}
    for c in conditions:
        result = reorder(distiset[f"format_{c}"]["train"].to_list(), [r["id"] for r in rows])
        kept_by[c] = [{"id": r["id"], "messages": r["messages"]} for r in result if r.get("messages")]
        counts[c] = len(kept_by[c])
    shared = matched_ids(kept_by)
    configs = {c: kept for c, kept in kept_by.items() if kept}
    matched = {}
    if cfg.students.matched:
        matched = {f"{c}_matched": [r for r in kept if r["id"] in shared] for c, kept in kept_by.items() if kept}
        configs.update(matched)
    removed = remove_stale_configs(stage.out_dir, set(configs))  # the folder holds exactly this run's configs
    reasons = empty_reasons(counts, surrogate_dir, inversion_dir)
    stats = {"rows": len(rows), "conditions": counts, "matched_rows": len(shared) if matched else None,
             "matched": {c: len(v) for c, v in matched.items()}, "empty": reasons, "removed_configs": removed}
    return Output(splits=configs, stats=stats, counts={**counts, **stats["matched"]},
                  sections={"Student conditions": conditions_section(stats)})


def matched_ids(kept_by: dict[str, list[dict]]) -> set[str]:
    """The row ids every non-empty condition has (an empty condition, e.g. target traces
    of a closed target, does not empty the others)."""
    sets = [{r["id"] for r in kept} for kept in kept_by.values() if kept]
    return set.intersection(*sets) if sets else set()


def remove_stale_configs(out_dir: Path, keep: set[str]) -> list[str]:
    """Remove ``data/<config>/`` shards of every config this run did not write (a
    condition now empty, or not asked for); the card lists the configs that remain."""
    data = Path(out_dir) / "data"
    removed = []
    for d in sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []:
        if d.name in keep:
            continue
        for f in list(d.glob("*.parquet")) + list(d.glob(".*.parquet*")):
            f.unlink()
        if not any(d.iterdir()):
            d.rmdir()
        removed.append(d.name)
    return removed


def empty_reasons(counts: dict[str, int], surrogate_dir, inversion_dir) -> dict[str, str]:
    """Why each empty condition is empty, with the fix."""
    out = {}
    for c, n in counts.items():
        if n:
            continue
        if c == "surrogate_traces" and surrogate_dir is None:
            out[c] = ("no surrogate traces on the target's problems; fix: student-data --run-surrogate (or "
                      "students.run_surrogate: true, with models.surrogate), or --surrogate FOLDER")
        elif c.startswith("inverted") and inversion_dir is None:
            out[c] = "no inversion output; fix: run `invert` first, or pass --inversion FOLDER"
        elif c == "target_traces":
            out[c] = "the target exposes no full traces (a closed target): the oracle condition needs an open one"
        else:
            out[c] = "no row has this condition's reasoning and answer"
    return out


def conditions_section(stats: dict) -> str:
    """The card's section on conditions: rows per condition and per matched variant."""
    from trace_inversion.hub_cards.card import md_cell

    lines = ["| condition | rows | row-matched variant | rows |", "|---|---|---|---|"]
    for c, n in stats["conditions"].items():
        m = f"{c}_matched"
        has = m in stats["matched"]
        lines.append(f"| {md_cell(c)} | {n} | {md_cell(m) if has else '-'} | {stats['matched'][m] if has else '-'} |")
    text = "\n".join(lines)
    if stats.get("matched_rows") is not None:
        text += (f"\n\nThe `_matched` configs hold the {stats['matched_rows']:,} rows every non-empty condition "
                 "shares: train on them to compare conditions on the same problems.")
    for c, why in (stats.get("empty") or {}).items():
        text += f"\n\n- {md_cell(c)} is empty: {md_cell(why)}"
    return text


SURROGATE_STAGE = "surrogate_on_targets"
SURROGATE_COLUMNS = ["id", "problem", "surrogate_trace", "surrogate_answer"]


def run_surrogate_on_targets(cfg: RunConfig, target_dir: Path, out_name: str = SURROGATE_STAGE) -> dict:
    """Run ``models.surrogate`` on the target's problems (the ``target`` config of a
    query-target output): ``<output.dir>/<out_name>`` with ``traces`` (id, problem,
    surrogate_trace, surrogate_answer: what ``join_sources`` reads) and ``failures``
    (truncated or failed generations, with the reason); its stats and card hold the
    surrogate's lengths (``lengths``). Model calls go through the request cache; a
    finished run with the same inputs is reused."""
    require_models(cfg, "surrogate")
    rows = [{"id": r["id"], "problem": r["problem"]} for r in read_split(Path(target_dir), "target")]
    stage = Stage(cfg, "surrogate-on-targets", rows, folder=out_name, summary=surrogate_summary)
    return stage.run(lambda: surrogate_output(cfg, stage))


def surrogate_output(cfg: RunConfig, stage: Stage) -> Output:
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.surrogate_generation import GenerateSurrogateTraces

    rows = stage.rows
    with Pipeline(name=f"{stage.label}-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_problems", data=rows, batch_size=256)
        load >> GenerateSurrogateTraces(name="surrogate_on_targets", max_model_len=cfg.inverter_data.max_model_len,
                                        **step_kwargs(cfg, "surrogate", len(rows)))
    result = reorder(run_pipeline(pipeline, cfg, stage.label), [r["id"] for r in rows])
    crashed_rows(result, "surrogate_model", "surrogate_error")
    ok = [r for r in result if not r.get("surrogate_error")]
    failed = [dict(r, failure=r["surrogate_error"]) for r in result if r.get("surrogate_error")]

    def failure_row(r):
        return {"id": r["id"], "problem": r["problem"], "surrogate_output": r.get("surrogate_output"),
                "failure": r.get("failure")}

    remove_stale_configs(stage.out_dir, {"traces", "failures"})
    stats = {"rows_in": len(rows), "rows_out": len(ok), "failures": len(failed),
             "failure_reasons": count_reasons(failed, "failure"), **retry_stats(cfg, "surrogate_on_targets"),
             "lengths": surrogate_lengths(cfg, result)}
    # a rerun retries the failed rows (--retry-failed sends them fresh)
    return Output(splits={"traces": [{k: r.get(k) for k in SURROGATE_COLUMNS} for r in ok],
                          "failures": [failure_row(r) for r in failed]},
                  like={"failures": [dict(failure_row(r), failure="") for r in ok[:1]]},
                  stats=stats, finished=not failed)


def surrogate_summary(stats: dict) -> str:
    return f"{stats['rows_out']:,} of {stats['rows_in']:,} target problems with surrogate traces · " \
           f"{stats['failures']:,} failed"


def summary(stats: dict) -> str:
    """The stage's key counts for its console line."""
    line = f"{stats['rows']:,} rows · " + ", ".join(f"{c} {n:,}" for c, n in stats["conditions"].items())
    if stats.get("matched_rows") is not None:
        line += f" · {stats['matched_rows']:,} shared by all (_matched)"
    return line


def add_parser(subparsers) -> None:
    """The ``student-data`` command."""
    from trace_inversion.cli_options import add_config_args

    p = subparsers.add_parser("student-data", help="pipeline: build the paper's student conditions from stage outputs",
                              description="Join target answers/summaries/traces, surrogate traces and inverted traces "
                                          "by row id and write one TRL conversational config per condition, plus "
                                          "<condition>_matched (the rows every non-empty condition shares).")
    add_config_args(p)
    p.add_argument("--target", help="query-target folder (default <output.dir>/target_query)")
    p.add_argument("--surrogate", help="folder with a `traces` config of surrogate traces on the same problems "
                                       "(default <output.dir>/surrogate_on_targets when it exists)")
    p.add_argument("--run-surrogate", action="store_true",
                   help="first run models.surrogate on the target's problems (-> <output.dir>/surrogate_on_targets; "
                        "same as students.run_surrogate: true): the data of the surrogate_traces condition")
    p.add_argument("--inversion", help="invert folder (default <output.dir>/inversion)")
    p.add_argument("--step-verified", metavar="FOLDER",
                   help="a second invert folder whose verifiers include a step-level one (e.g. invert.verifiers: "
                        "[answer, steps]): adds the condition inverted_step_verified (its verified traces)")
    p.add_argument("--conditions", help="comma-separated subset of conditions")
    p.set_defaults(func=main)


def main(args) -> int:
    import sys

    from trace_inversion.cli_options import claim, config_from, print_json
    from trace_inversion.data.loading import check_local_models
    from trace_inversion.errors import UserError

    cfg = config_from(args)
    run_surrogate = args.run_surrogate or cfg.students.run_surrogate
    if run_surrogate:
        if args.surrogate:
            raise UserError("--surrogate and --run-surrogate both name the surrogate traces; fix: give one")
        require_models(cfg, "surrogate")
        check_local_models(cfg, ("surrogate",))
    base = Path(cfg.output.dir)
    target = Path(args.target or base / STAGES["query-target"]["folder"])
    if not (target / "data" / "target").is_dir():
        raise UserError(f"{target} holds no query-target output (data/target); fix: run query-target first, "
                        "or pass --target FOLDER")
    inversion = Path(args.inversion) if args.inversion else base / STAGES["invert"]["folder"]
    if not inversion.exists():
        if args.inversion:
            raise UserError(f"--inversion {inversion} does not exist; fix: run invert first, or check the path")
        inversion = None  # the conditions without inversion still build
    claim(cfg.output.dir, args)
    if run_surrogate:  # the surrogate on the target's own problems: the surrogate_traces condition
        run_surrogate_on_targets(cfg, target)
        surrogate = base / SURROGATE_STAGE
    elif args.surrogate:
        surrogate = Path(args.surrogate)
    else:
        surrogate = base / SURROGATE_STAGE if (base / SURROGATE_STAGE / "data" / "traces").is_dir() else None
    step_verified = Path(args.step_verified) if args.step_verified else None
    if step_verified is not None and not (step_verified / "data" / "inverted").is_dir():
        raise UserError(f"--step-verified {step_verified} holds no invert output (data/inverted); fix: run invert "
                        "with a step-level verifier into that folder first")
    stats = run_student_data(cfg, target, surrogate, inversion,
                             args.conditions.split(",") if args.conditions else DEFAULT_CONDITIONS,
                             step_verified_dir=step_verified)
    for c, why in (stats.get("empty") or {}).items():
        print(f"note: condition {c} is empty: {why}", file=sys.stderr)
    print_json(stats)
    return 0
