"""The ``invert`` pipeline: target (problem, answer, summary) -> verified full traces.

``LoadDataFromDicts >> InvertTraces`` on a query-target output (or any dataset with
problem / answer / summary columns). Output folder ``<output.dir>/inversion``:

- ``inverted``: verified rows only (answer-consistent and passing every configured
  verifier), with the trace, verdict, reason, per-verifier ``verification``, number of
  attempts and per-row overlap metrics;
- ``unverifiable``: rows whose best trace cannot be verified (``invert.unverifiable:
  keep``, the default), with the reason; students get them only with
  ``invert.unverifiable_to_students``;
- ``unfiltered``: the first sample of every row, as an unverified pipeline (the
  paper's) would keep it, for the "unfiltered" student condition;
- ``rejected``: rows without a verified or kept sample, with the reason;
- ``stats.json`` and the card: counts per status, reason and verifier, how the
  target's answers were found, resampling rounds, overlap metrics (kept and
  unfiltered) when ground-truth traces exist, and in the toy world the share of traces
  whose every step is right (what answer checking cannot see);
- ``lengths`` in ``stats.json`` and the card: cap-hit rate, median and p90 length of the
  first draws, of every draw and of the kept traces (the inverter's own tokens where its
  tokenizer loads offline, else word tokens), and ``length_ratio``: inverted vs true
  trace length, or vs the surrogate's traces (``inverter_data``) without true traces.

The optional length filter (``invert.max_length_ratio``) rejects traces longer than
that multiple of the row's true trace (else of the median surrogate trace).
"""

from __future__ import annotations

import json
from pathlib import Path

from trace_inversion.pipelines import STAGES
from trace_inversion.config import ConfigError, RunConfig
from trace_inversion.data.loading import DataError, validate_rows
from trace_inversion.data.io import split_path
from trace_inversion.pipelines.common import (count_reasons, crashed_rows, distilabel_cache, reorder, require_models,
                                             retry_stats, run_pipeline, step_kwargs, step_timings)
from trace_inversion.pipelines.stage import Output, Stage
from trace_inversion.prompts import stage_templates


def load_inversion_rows(cfg: RunConfig) -> list[dict]:
    import polars as pl

    ic = cfg.invert
    src = Path(ic.source) if ic.source else Path(cfg.output.dir) / STAGES["query-target"]["folder"]
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


def templates(cfg: RunConfig) -> dict:
    """The inverter's user template and system prompt, and the judge's template."""
    return stage_templates(cfg, "inverter_user", "inverter_system", "judge")


def surrogate_traces(cfg: RunConfig) -> list[str] | None:
    """The surrogate's traces from this run's ``inverter_data`` (the reference lengths
    of inverted traces when there are no true traces), or None when there are none."""
    from trace_inversion.data.io import read_split

    folder = Path(cfg.output.dir) / STAGES["build-inverter-data"]["folder"]
    try:
        traces = [r["surrogate_trace"] for r in read_split(folder, "traces") if r.get("surrogate_trace")]
    except (FileNotFoundError, KeyError, OSError):
        return None
    return traces or None


def length_reference(cfg: RunConfig, rows: list[dict]) -> float | None:
    """The length filter's reference for rows without a true trace: the median length
    of the surrogate's traces in the inverter's unit (None: filter off, or not needed)."""
    from trace_inversion.scoring.lengths import counter_for_model, quantile

    ic = cfg.invert
    gt = ic.ground_truth_column
    if ic.max_length_ratio is None or all(gt and r.get(gt) for r in rows):
        return None
    traces = surrogate_traces(cfg)
    if not traces:
        return None
    counter = counter_for_model(cfg.models.inverter)
    return quantile([counter.count(t) for t in traces], 0.5)


def build_pipeline(cfg: RunConfig, rows: list[dict], prompts: dict | None = None,
                   reference_length: float | None = None):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.inversion import InvertTraces

    require_models(cfg, "inverter")
    ic = cfg.invert
    prompts = templates(cfg) if prompts is None else prompts
    system = prompts.get("inverter_system")
    if "judge" in ic.verifiers and cfg.models.judge is None:
        raise ConfigError(["models.judge: missing, and invert.verifiers lists judge; fix: add a judge model "
                           "(any backend) under models.judge, or drop judge from invert.verifiers"])
    prm = None
    if "prm" in ic.verifiers:
        prm = {"model": ic.prm_model, "threshold": ic.prm_threshold, "step_token": ic.prm_step_token,
               "max_length": ic.prm_max_length, "batch_size": ic.prm_batch_size,
               "trust_remote_code": ic.prm_trust_remote_code, "engine": ic.prm_engine}
    judge = cfg.models.judge.model_dump(mode="json") if "judge" in ic.verifiers else None
    with Pipeline(name=f"invert-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_targets", data=rows, batch_size=256)
        invert = InvertTraces(name="invert", with_summary=ic.with_summary, samples_per_round=ic.samples_per_round,
                              max_attempts=ic.max_attempts, unverifiable=ic.unverifiable,
                              verifiers=list(ic.verifiers), judge_model=judge, prm=prm,
                              answer_column=ic.answer_column, summary_column=ic.summary_column, base_seed=cfg.seed,
                              user_template=prompts["inverter_user"].text, system_prompt=system.text if system else None,
                              max_length_ratio=ic.max_length_ratio, reference_column=ic.ground_truth_column,
                              reference_length=reference_length,
                              max_model_len=ic.max_model_len, **step_kwargs(cfg, "inverter", len(rows)))
        load >> invert
    return pipeline


def toy_step_share(rows: list[dict], trace_key: str) -> float | None:
    """Share of traces whose every step is right (toy world only)."""
    from trace_inversion.toy.world import check_steps, parse_problem

    probs = [(parse_problem(r["problem"], r["id"]), r.get(trace_key)) for r in rows]
    if not probs or any(p is None for p, _ in probs):
        return None
    return round(sum(check_steps(p, t or "")["all_correct"] for p, t in probs) / len(probs), 4)


def run_invert(cfg: RunConfig, rows: list[dict] | None = None, folder: str = STAGES["invert"]["folder"]) -> dict:
    """Run the stage (``Stage``: reused when finished with the same inputs) into
    ``<output.dir>/<folder>``; returns its stats. The demo runs it twice, with
    ``verifiers: [answer, steps]`` and ``[answer]``, into two folders: the samples both
    draw are the same cached requests, so the second run replays them from the cache."""
    rows = rows if rows is not None else load_inversion_rows(cfg)
    ref = length_reference(cfg, rows)
    # the length filter's surrogate reference changes the output: part of the fingerprint (only when used)
    label = "invert" if folder == STAGES["invert"]["folder"] else folder.replace("_", "-")
    stage = Stage(cfg, "invert", rows, folder=folder, label=label, summary=summary,
                  templates=templates(cfg), inputs={"length_reference": ref} if ref is not None else None)
    return stage.run(lambda: invert_output(cfg, rows, stage.templates, ref, label))


def invert_output(cfg: RunConfig, rows: list[dict], prompts: dict, reference_length: float | None = None,
                  label: str = "invert") -> Output:
    """Run the pipeline on ``rows`` and sort its rows into the stage's configs
    (``label``: the stage's console name and log file)."""
    from trace_inversion.scoring.metrics import corpus_metrics, pair_metrics

    ic = cfg.invert
    result = reorder(run_pipeline(build_pipeline(cfg, rows, prompts, reference_length), cfg, label),
                     [r["id"] for r in rows])
    crashed_rows(result, "inverter_model", "inversion_reason")
    gt = ic.ground_truth_column
    has_gt = bool(gt) and any(r.get(gt) for r in result)
    for r in result:
        r["inversion_accepted"] = bool(r.get("inversion_accepted"))
        r["inversion_status"] = r.get("inversion_status") or ("verified" if r["inversion_accepted"] else "rejected")
        r["n_attempts"] = len(r.get("inversion_attempts") or [])
        r["inversion_attempts"] = json.dumps(r.get("inversion_attempts") or [])
        if has_gt:  # an empty true trace scores 0, as in the paper's code
            for k, v in pair_metrics(r.get("inverted_trace") or "", r.get(gt)).items():
                r[f"overlap_{k}"] = v
    kept = [r for r in result if r["inversion_status"] == "verified"]
    unverifiable = [r for r in result if r["inversion_status"] == "unverifiable"]
    rejected = [r for r in result if r["inversion_status"] == "rejected"]
    unfiltered = [{"id": r["id"], "problem": r["problem"], ic.answer_column: r[ic.answer_column],
                   "first_trace": r.get("first_trace"), "first_verdict": r.get("first_verdict")} for r in result
                  if r.get("first_trace")]
    rounds: dict[str, int] = {}
    for r in kept:
        rounds[str(r["n_attempts"])] = rounds.get(str(r["n_attempts"]), 0) + 1
    first = [first_answer_verdict(r) for r in result]
    first_all = [r.get("first_verdict") for r in result]
    methods: dict[str, int] = {}
    for r in result:
        m = r.get("target_answer_method") or "none"
        methods[m] = methods.get(m, 0) + 1
    stats = {
        "rows_in": len(rows), "kept": len(kept), "unverifiable": len(unverifiable), "rejected": len(rejected),
        "status": {"verified": len(kept), "unverifiable": len(unverifiable), "rejected": len(rejected)},
        "rejected_reasons": count_reasons(rejected, "inversion_reason"),
        "unverifiable_reasons": count_reasons(unverifiable, "inversion_reason"),
        "kept_verdicts": {"verified": len(kept), "unverifiable (own config)": len(unverifiable)},
        "first_sample": {"consistent": sum(v is True for v in first), "inconsistent": sum(v is False for v in first),
                         "unverifiable": sum(v is None for v in first)},
        "first_sample_all_verifiers": {"verified": sum(v is True for v in first_all),
                                       "rejected": sum(v is False for v in first_all),
                                       "unverifiable": sum(v is None for v in first_all)},
        "target_answer_methods": methods,
        "target_answer_not_found": methods.get("none", 0),
        "verifiers": list(ic.verifiers),
        "verification": verification_counts(result),
        "attempts_of_kept_rows": rounds,
        "with_summary": ic.with_summary, "max_attempts": ic.max_attempts, "unverifiable_policy": ic.unverifiable,
        "max_length_ratio": ic.max_length_ratio,
    }
    stats.update(inversion_lengths(cfg, result, kept, gt if has_gt else None))
    if has_gt:  # every row, an empty true trace scoring 0 (as in the paper's code)
        stats["overlap_kept"] = corpus_metrics([r["inverted_trace"] for r in kept], [r.get(gt) for r in kept])[1]
        stats["overlap_unfiltered"] = corpus_metrics([r.get("first_trace") for r in result],
                                                     [r.get(gt) for r in result])[1]
    stats["inverter_timings"] = step_timings(cfg, "invert")
    stats.update(retry_stats(cfg, "invert"))  # the step's name (its timings file), not the label
    steps_kept = toy_step_share(kept, "inverted_trace")
    if steps_kept is not None:
        stats["toy_all_steps_correct"] = {"kept": steps_kept, "unfiltered": toy_step_share(result, "first_trace")}
    return Output(
        splits={"inverted": kept, "unverifiable": unverifiable, "rejected": rejected, "unfiltered": unfiltered},
        like={"inverted": result, "unverifiable": result, "rejected": result},
        counts={"inverted": len(kept), "unverifiable": len(unverifiable), "unfiltered": len(unfiltered),
                "rejected": len(rejected)},
        stats=stats, sections={"Verification": verification_section(stats)},
        # a crashed batch is retried by the next run
        finished=not any((r.get("inversion_reason") or "").startswith("internal error") for r in rejected))


def inversion_lengths(cfg: RunConfig, result: list[dict], kept: list[dict], gt: str | None) -> dict:
    """``lengths`` (per draw: the first draw of each row, every draw, the kept traces;
    ``reference``: the traces they are compared with) and ``length_ratio`` (inverted vs
    true traces row by row, else vs the surrogate's traces of ``inverter_data`` as a
    ratio of medians), all in the inverter's unit (``scoring.lengths``)."""
    from trace_inversion.scoring.lengths import counter_for_model, length_ratios, summarize_lengths

    m = cfg.models.inverter
    counter = counter_for_model(m)
    unit = next((r["length_unit"] for r in result if r.get("length_unit")), counter.unit)
    cap = m.sampling.max_new_tokens if m is not None else None
    atts = [json.loads(r.get("inversion_attempts") or "[]") for r in result]
    firsts = [a[0] for a in atts if a]
    every = [x for a in atts for x in a]

    def draws(xs: list[dict], of: str) -> dict:
        return dict(summarize_lengths([x.get("length") for x in xs], [x.get("cap_hit") for x in xs], unit, cap), of=of)

    kept_lengths = [counter.count(r["inverted_trace"]) if r.get("inverted_trace") is not None else None for r in kept]
    lengths = {"inverter_first_draws": draws(firsts, "first draw of each row (whole output)"),
               "inverter_all_draws": draws(every, "every draw, resamples included (whole output)"),
               # the kept traces passed the truncation filter: no cap statistics
               "inverter_kept": dict(summarize_lengths(kept_lengths, [None] * len(kept), unit),
                                     of="kept (verified) traces")}
    first_lengths = [a[0].get("length") if a else None for a in atts]
    if gt is not None:
        refs = [counter.count(r[gt]) if r.get(gt) else None for r in result]
        ref_of = f"true traces (column {gt})"
        by_id = dict(zip((r["id"] for r in result), refs))
        ratio = {"first_draws": length_ratios(first_lengths, refs),
                 "kept": length_ratios(kept_lengths, [by_id.get(r["id"]) for r in kept])}
    else:
        traces = surrogate_traces(cfg)
        if not traces:
            return {"lengths": lengths, "length_ratio": {"reference": None, "unit": unit,
                                                         "why": "no true traces and no surrogate traces"}}
        refs = [counter.count(t) for t in traces]
        ref_of = "surrogate traces (inverter_data, other problems: a ratio of medians)"
        ratio = {"first_draws": length_ratios(first_lengths, refs, paired=False),
                 "kept": length_ratios(kept_lengths, refs, paired=False)}
    lengths["reference"] = dict(summarize_lengths(refs, [None] * len(refs), unit), of=ref_of)
    return {"lengths": lengths, "length_ratio": dict(ratio, reference=ref_of, unit=unit)}


def summary(stats: dict) -> str:
    """The stage's key counts for its console line."""
    return (f"{stats['kept']:,} of {stats['rows_in']:,} traces verified · {stats.get('unverifiable', 0):,} unverifiable · "
            f"{stats['rejected']:,} rejected · first sample consistent {stats['first_sample']['consistent']:,}")


def first_answer_verdict(row: dict):
    """The first sample's answer-consistency verdict (False when a filter or a failed
    call rejected it before the answer check): what an unverified pipeline would see."""
    atts = json.loads(row.get("inversion_attempts") or "[]")
    if not atts:
        return row.get("first_verdict")
    ans = next((v for v in atts[0].get("verification") or [] if v["verifier"] == "answer"), None)
    return ans["verdict"] if ans is not None else atts[0].get("verdict")


def verification_counts(result: list[dict]) -> dict:
    """Per verifier: verdict counts and reason kinds (values blanked), for the chosen
    sample of every row (``final``) and over every attempt (``all_attempts``: what the
    verifiers rejected on the way)."""
    from trace_inversion.scoring.verifiers import reason_kind

    def add(out: dict, v: dict) -> None:
        d = out.setdefault(v["verifier"], {"pass": 0, "fail": 0, "cannot_verify": 0, "reasons": {}})
        d[{True: "pass", False: "fail"}.get(v["verdict"], "cannot_verify")] += 1
        kind = reason_kind(v["reason"])
        d["reasons"][kind] = d["reasons"].get(kind, 0) + 1

    final: dict = {}
    every: dict = {}
    for r in result:
        for v in r.get("verification") or []:
            add(final, v)
        for a in json.loads(r.get("inversion_attempts") or "[]"):
            for v in a.get("verification") or []:
                add(every, v)
    return {"final": final, "all_attempts": every}


def verification_section(stats: dict) -> str:
    """The card's account of the verifiers: one table row per verifier and reason."""
    from trace_inversion.hub_cards.card import md_cell

    lines = [f"Verifiers, in order: {md_cell(', '.join(stats.get('verifiers') or []))}. Rows: "
             f"{stats['kept']} verified (config `inverted`), {stats.get('unverifiable', 0)} unverifiable "
             f"(config `unverifiable`, policy `{md_cell(stats.get('unverifiable_policy'))}`), {stats['rejected']} "
             f"rejected. Target answers not found: {stats.get('target_answer_not_found', 0)}.", "",
             "| samples | verifier | verdict counts (pass / fail / cannot verify) | reason | n |", "|---|---|---|---|---|"]
    for scope, label in (("final", "chosen"), ("all_attempts", "every attempt")):
        for name, d in ((stats.get("verification") or {}).get(scope) or {}).items():
            counts = f"{d['pass']} / {d['fail']} / {d['cannot_verify']}"
            for reason, n in sorted(d["reasons"].items(), key=lambda kv: -kv[1]):
                lines.append(f"| {label} | {md_cell(name)} | {counts} | {md_cell(reason)} | {n} |")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    """The ``invert`` command."""
    from trace_inversion.cli_options import add_config_args

    p = subparsers.add_parser("invert", help="pipeline: write full traces from target answers + summaries, verified",
                              description="Run the inverter on a query-target output (or any dataset with problem / "
                                          "answer / summary columns); resample traces that do not reach the target's "
                                          "answer (verified synthesis); write inverted, unfiltered and rejected rows "
                                          "with reasons and overlap metrics.")
    add_config_args(p)
    p.add_argument("--folder", default=STAGES["invert"]["folder"],
                   help="output subfolder of output.dir (default inversion); e.g. a second run with "
                        "invert.verifiers [answer, steps] into inversion_steps, for student-data --step-verified")
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import claim, config_from, print_json
    from trace_inversion.errors import UserError

    if not args.folder or Path(args.folder).name != args.folder or args.folder in (".", ".."):
        raise UserError(f"--folder {args.folder!r}: must be one folder name inside output.dir; fix: e.g. "
                        "--folder inversion_steps")
    cfg = config_from(args, roles=("inverter", "judge"))
    claim(cfg.output.dir, args)
    print_json(run_invert(cfg, load_inversion_rows(cfg), folder=args.folder))
    return 0
