"""The ``query-target`` pipeline: problems in, target answers and summaries out.

A real distilabel pipeline: ``LoadDataFromDicts >> QueryTarget``, then, for a target
whose reasoning is a full trace with ``query.summarize_traces_with: compressor``,
``>> SummarizeTargetTraces`` (the compressor writes ``target_summary`` from
``target_trace``, as in the paper's open-target experiments). distilabel's own cache is
off (its resume hangs, upstream #1065); the project's request cache makes a rerun after
a crash free for every finished request. With ``budget_usd`` every step process and Ray
replica draws on one ledger (``cache.BudgetLedger``, scope ``query-target:<name>``)
opened here before the pipeline starts. Output: parquet under
``<output.dir>/target_query/data/{target,failures}/train.parquet`` plus ``stats.json``.
"""

from __future__ import annotations

from trace_inversion.pipelines import STAGES
from trace_inversion.config import RunConfig
from trace_inversion.errors import UserError
from trace_inversion.data.loading import load_rows
from trace_inversion.pipelines.common import (count_reasons, crashed_rows, distilabel_cache, reorder, require_models,
                                             retry_stats, run_pipeline, step_kwargs, step_timings)
from trace_inversion.pipelines.stage import Output, Stage
from trace_inversion.prompts import stage_templates


def budget_scope(cfg: RunConfig) -> str:
    """The run's budget ledger scope in the request cache (one per stage and run name)."""
    return f"query-target:{cfg.name}"


def open_budget(cfg: RunConfig) -> None:
    """Start the run's shared budget afresh (before any step runs): a budget counts the new
    spending of this run, shared by every process and replica."""
    if cfg.budget_usd is not None:
        from trace_inversion.models.cache import BudgetLedger

        ledger = BudgetLedger(cfg.resolved_cache_path.resolve(), budget_scope(cfg))
        try:
            ledger.open(cfg.budget_usd)
        finally:
            # closed now, not when the GC gets to it (a sqlite3.Connection sits in a reference
            # cycle): a connection open in this process when distilabel forks its workers can
            # be closed in a worker, which drops that worker's locks and can lose the WAL
            ledger.close()


def check_credentials(cfg: RunConfig) -> None:
    """Every API model of the stage has its key, before any call is paid."""
    from trace_inversion.models.clients import credential_problems
    from trace_inversion.config import ConfigError

    problems = credential_problems(cfg.models.target, "target")
    if cfg.query.summarize_traces_with == "compressor" and cfg.models.compressor is not None:
        problems += credential_problems(cfg.models.compressor, "compressor")
    if problems:
        raise ConfigError(problems)


def templates(cfg: RunConfig) -> dict:
    """The prompts the stage sends: the target's system prompt, and the compressor's
    when it summarises full traces."""
    summarize = cfg.query.summarize_traces_with == "compressor"
    return stage_templates(cfg, "target_system", *(["compressor"] if summarize else []))


def build_pipeline(cfg: RunConfig, rows: list[dict], name: str = "query-target", prompts: dict | None = None):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.query_target import QueryTarget, SummarizeTargetTraces

    summarize = cfg.query.summarize_traces_with == "compressor"
    prompts = templates(cfg) if prompts is None else prompts
    require_models(cfg, "target", *(["compressor"] if summarize else []))
    kw = step_kwargs(cfg, "target", len(rows))
    with Pipeline(name=f"{name}-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_problems", data=rows, batch_size=kw["input_batch_size"])
        query = QueryTarget(
            name="query_target",
            **kw,
            require_summary=cfg.query.require_summary,
            system_prompt=cfg.query.system_prompt,
            refusal_patterns=cfg.query.refusal_patterns,
            summarize_traces=summarize,
            budget_usd=cfg.budget_usd,
            budget_scope=budget_scope(cfg),
        )
        load >> query
        if summarize:
            ckw = step_kwargs(cfg, "compressor", len(rows))
            ckw["input_batch_size"] = kw["input_batch_size"]
            compress = SummarizeTargetTraces(
                name="summarize_target_traces", **ckw, style=cfg.inverter_data.summary_style,
                prompt_file=cfg.inverter_data.prompt_file, prompt=prompts["compressor"].text,
                max_model_len=cfg.inverter_data.max_model_len,
                budget_usd=cfg.budget_usd, budget_scope=budget_scope(cfg))
            query >> compress
    return pipeline


def apply_summaries(cfg: RunConfig, result: list[dict]) -> None:
    """Rows of a summarised full-trace target: the compressor's summary becomes
    ``target_summary``; a row the compressor could not summarise fails with its reason."""
    for r in result:
        r.pop("trace_for_summary", None)
        summary, error = r.pop("summary", None), r.pop("summary_error", None)
        if r.get("query_error") is not None:
            continue
        if summary:
            r["target_summary"] = summary
        elif r.get("query_attempts") is not None:
            r["query_error"] = f"compressor: {error or 'empty summary'}"


def run_query_target(cfg: RunConfig, rows: list[dict] | None = None, split: str = "train") -> dict:
    """Run the stage (``Stage``: reused when finished with the same inputs); returns its stats."""
    rows = rows if rows is not None else load_rows(cfg.data, split)
    stage = Stage(cfg, "query-target", rows, folder=STAGES["query-target"]["folder"], label="query-target", summary=summary,
                  templates=templates(cfg))

    def produce() -> Output:
        check_credentials(cfg)
        open_budget(cfg)  # before the batch: its cost is part of the run's one budget
        batch = run_batch_api(cfg, rows) if cfg.query.batch_api else None
        pipeline = build_pipeline(cfg, rows, prompts=stage.templates)
        result = reorder(run_pipeline(pipeline, cfg, stage.label), [r["id"] for r in rows])
        crashed_rows(result, "query_attempts", "query_error")
        if cfg.query.summarize_traces_with == "compressor":
            apply_summaries(cfg, result)
        for r in result:
            if r.get("query_attempts") is None:
                r.update(query_attempts=0, target_cost_usd=0.0)
        ok = [r for r in result if r["query_error"] is None]
        failed = [r for r in result if r["query_error"] is not None]
        # Per-run facts (attempts) go to stats, not rows: a resumed run writes identical data.
        ok_rows = [{k: v for k, v in r.items() if k != "query_attempts"} for r in ok]
        failed_rows = [{k: v for k, v in r.items() if k != "query_attempts"} for r in failed]
        stats = {
            "rows_in": len(rows),
            "rows_out": len(ok),
            "failures": len(failed),
            "failure_reasons": count_reasons(failed, "query_error"),
            "cost_usd": sum(r["target_cost_usd"] or 0 for r in result),  # what the dataset cost to produce
            "new_cost_usd": round((step_timings(cfg, "query_target") or {}).get("cost_usd", 0.0)
                                  + (batch or {}).get("cost_usd", 0.0), 9),  # paid in this run
            "input_tokens": sum((r["target_usage"] or {}).get("input_tokens", 0) for r in result),
            "output_tokens": sum((r["target_usage"] or {}).get("output_tokens", 0) for r in result),
            "http_attempts": sum(r["query_attempts"] for r in result),
            **retry_stats(cfg, "query_target"),
            **budget_stats(cfg),
            **({"batch_api": batch} if batch is not None else {}),
        }
        # failed rows (e.g. retries exhausted, budget) are retried by the next run: not finished
        return Output(splits={"target": ok_rows, "failures": failed_rows},
                      like={"target": failed_rows, "failures": ok_rows}, stats=stats, finished=not failed)

    return stage.run(produce)


class BatchPending(UserError):
    """The run's batches are still running at the provider (nothing is lost)."""


def run_batch_api(cfg: RunConfig, rows: list[dict]) -> dict:
    """``query.batch_api``: every target request not yet in the request cache goes to
    OpenAI's Batch API (``batch_api.run_batch``: submitted once, picked up again by a
    later run, results stored under the keys the direct path uses). The pipeline then
    replays them from the cache; what the batch could not answer is requested directly.
    Batches still running after ``query.batch_wait_s`` stop the run with
    ``BatchPending``: the next run collects them."""
    from trace_inversion.models.batch_api import BatchRequest, run_batch
    from trace_inversion.models.cache import BudgetLedger, RequestCache, to_nusd
    from trace_inversion.models.clients import (api_key_for, cost_of, max_cost, parse_chat_output, parse_responses_output,
                                         request_client)
    from trace_inversion.config import ConfigError
    from trace_inversion.models import CachedModel, llm_from_config

    t = cfg.models.target
    system = [{"role": "system", "content": cfg.query.system_prompt}] if cfg.query.system_prompt else []
    convs = [system + [{"role": "user", "content": r["problem"]}] for r in rows]
    responses = t.backend == "openai-responses"
    parser = parse_responses_output if responses else parse_chat_output
    cache = RequestCache(cfg.resolved_cache_path, secret_env=(t.api_key_env,))
    try:
        direct = CachedModel(llm_from_config(t), cache)  # the keys and cache payloads of the direct path
        raw = request_client(t)  # the bodies it would send
        todo = [m for m in convs if direct.key(m) not in cache]
        ledger, reserved = None, 0
        if cfg.budget_usd is not None and todo:
            # a batch is paid as a whole: its worst case is reserved in the run's ledger before
            # it is submitted, and what it cost is settled there (direct requests see the rest)
            worst = sum(max_cost(t, m) or 0.0 for m in todo) * 0.5
            ledger = BudgetLedger(cfg.resolved_cache_path.resolve(), budget_scope(cfg))
            reserved = to_nusd(worst, up=True)
            if ledger.try_reserve(reserved) != "ok":
                ledger.close()
                raise ConfigError([f"query.batch_api: the batch's worst case (${worst:.4f} for {len(todo):,} "
                                   f"requests at half price) does not fit budget_usd (${cfg.budget_usd}): a batch "
                                   "is paid as a whole once submitted; fix: raise budget_usd, lower sampling."
                                   "max_new_tokens, or query fewer rows (data.subset)"])
        payloads = [direct.payload(m) for m in todo]
        reqs = [BatchRequest(key=direct.key_of(pl), body={"model": t.model, **raw.body(m)}, key_payload=pl,
                             model=direct.model_key, backend=direct.backend) for m, pl in zip(todo, payloads)]
        report = run_batch(reqs, cache=cache, parse=lambda body: dict(parser(body), price_factor=0.5),
                           state_dir=cfg.resolved_cache_path.resolve().parent / "batches",
                           run_tag=f"{cfg.name}/target", endpoint="/v1/responses" if responses else
                           "/v1/chat/completions", base_url=t.base_url, api_key=api_key_for(t),
                           poll_s=cfg.query.batch_poll_s, timeout_s=cfg.query.batch_wait_s,
                           cost_fn=lambda u: cost_of(u, t))
        if ledger is not None:
            ledger.settle(reserved, to_nusd(report.cost_usd, up=True))
    finally:
        cache.close()  # never left open for the pipeline's fork
        if ledger is not None:
            ledger.close()
    if report.status == "pending":
        raise BatchPending(f"{len(report.pending)} batch(es) still running at the provider ({', '.join(report.pending)});"
                           " nothing is lost and nothing will be submitted twice: run the same command again later "
                           "to collect them (or raise query.batch_wait_s)")
    return {"requests": len(convs), "already_cached": len(convs) - len(todo), "created": len(report.created),
            "resumed": len(report.resumed), "stored": report.stored, "failed": len(report.failures),
            "failure_reasons": _reason_counts(report.failures.values()), "cost_usd": round(report.cost_usd, 9),
            "cost_full_price_usd": round(report.cost_full_price_usd, 9)}


def _reason_counts(reasons) -> dict:
    out: dict = {}
    for r in reasons:
        out[str(r)[:120]] = out.get(str(r)[:120], 0) + 1
    return out


def summary(stats: dict) -> str:
    """The stage's key counts for its console line."""
    text = (f"{stats['rows_out']:,} of {stats['rows_in']:,} rows answered · {stats['failures']:,} failed · "
            f"${stats.get('new_cost_usd') or 0:.4f} paid")
    if stats.get("retried_requests"):
        text += f" · {stats['retried_recovered']:,}/{stats['retried_requests']:,} retries recovered"
    return text


def budget_stats(cfg: RunConfig) -> dict:
    """What the run's shared budget ledger recorded (every process and replica together)."""
    if cfg.budget_usd is None:
        return {}
    from trace_inversion.models.cache import BudgetLedger

    ledger = BudgetLedger(cfg.resolved_cache_path.resolve(), budget_scope(cfg))
    try:
        st = ledger.state()
    finally:
        ledger.close()
    return {"budget": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in st.items()}} if st else {}


def dry_run(cfg: RunConfig, rows: list[dict], sample: bool = False) -> dict:
    """The cost of querying ``rows``, estimated before any call.

    Without ``sample`` nothing is sent: rows the request cache already answered replay
    free; for the others the worst case is what the budget reserves per request (an
    input-token bound x input price + the output cap x output price), so the run can
    never cost more; the expected cost is extrapolated from whatever responses of these
    rows the cache holds (none on a fresh run). With ``sample``, ``query.dry_run_sample``
    rows are queried first (through the cache and within budget_usd: the run replays
    them, nothing is paid twice) to measure the expected cost.
    """
    from trace_inversion.models.cache import RequestCache

    require_models(cfg, "target")
    t = cfg.models.target
    cache = RequestCache(cfg.resolved_cache_path, secret_env=(t.api_key_env,))
    try:
        return _dry_run(cfg, rows, sample, cache)
    finally:
        cache.close()  # never left open for a later pipeline's fork (see open_budget)


def _dry_run(cfg: RunConfig, rows: list[dict], sample: bool, cache) -> dict:
    import asyncio
    import random

    from trace_inversion.models.clients import Budget, cost_of, credential_problems, input_token_bound, make_client, max_cost
    from trace_inversion.config import ConfigError

    t = cfg.models.target
    client = make_client(t, cache, world=cfg.data.toy, budget=Budget(cfg.budget_usd))
    sys_msg = [{"role": "system", "content": cfg.query.system_prompt}] if cfg.query.system_prompt else []
    convs = {r["id"]: sys_msg + [{"role": "user", "content": r["problem"]}] for r in rows}
    k = min(cfg.query.dry_run_sample, len(rows)) if sample else 0
    if k:
        if credential_problems(t):
            raise ConfigError(credential_problems(t))
        picked = random.Random(cfg.seed).sample(rows, k)

        async def go():
            try:
                return await client.query_many([convs[r["id"]] for r in picked])
            finally:
                await client.aclose()

        sampled = asyncio.run(go())
    else:
        sampled = []
    known = {}
    for rid, m in convs.items():
        hit = cache.get(client.key(m))
        if hit is not None:
            known[rid] = hit
    todo = [convs[rid] for rid in convs if rid not in known]
    worst = [max_cost(t, m) for m in todo]
    worst_total = None if any(w is None for w in worst) else round(sum(worst), 6)
    costs = [cost_of(h.get("usage", {}), t) for h in known.values()]
    mean = sum(costs) / len(costs) if costs else None
    tok_in = [h.get("usage", {}).get("input_tokens", 0) for h in known.values()]
    tok_out = [h.get("usage", {}).get("output_tokens", 0) for h in known.values()]
    mean_out = sum(tok_out) / len(tok_out) if tok_out else None
    out = {
        "rows": len(rows), "rows_cached": len(known), "rows_to_send": len(todo),
        "max_output_tokens": t.max_output_tokens(),
        "input_tokens_bound": sum(input_token_bound(m) for m in todo),
        "worst_case_cost_usd": worst_total,
        "within_budget_worst_case": None if cfg.budget_usd is None or worst_total is None else worst_total <= cfg.budget_usd,
        "sample": k, "sample_failures": sum(1 for r in sampled if not r.ok),
        "sample_cost_usd": round(client.usage.cost_usd, 6),
        "measured_rows": len(known),
        "mean_cost_per_row_usd": None if mean is None else round(mean, 6),
        "estimated_total_cost_usd": None if mean is None else round(mean * len(rows), 4),
        "estimated_new_cost_usd": None if mean is None else round(mean * len(todo), 4),
        "mean_input_tokens": round(sum(tok_in) / len(tok_in), 1) if tok_in else None,
        "mean_output_tokens": None if mean_out is None else round(mean_out, 1),
        "estimated_output_tokens": None if mean_out is None else int(mean_out * len(rows)),
        "within_budget": None if cfg.budget_usd is None or mean is None else mean * len(todo) <= cfg.budget_usd,
        "credential_problems": credential_problems(t),
    }
    if cfg.query.summarize_traces_with == "compressor":
        out["note"] = "target only: the compressor's cost (query.summarize_traces_with) is not included"
    return out


def add_parser(subparsers) -> None:
    """The ``query-target`` command."""
    from trace_inversion.cli_options import add_config_args

    p = subparsers.add_parser("query-target", help="pipeline: ask the target for answers and reasoning summaries",
                              description="Query the target model (toy, OpenAI Responses API or an OpenAI-compatible "
                                          "server) for each problem, through the request cache; a rerun pays nothing "
                                          "twice.")
    add_config_args(p)
    p.add_argument("--split", help="input split (default: the config's data.split; toy: train or test)")
    p.add_argument("--dry-run", action="store_true",
                   help="estimate the cost before any call: the worst case the budget would reserve (input bound x "
                        "input price + output cap x output price per row) and, from responses already cached, the "
                        "expected cost; sends nothing")
    p.add_argument("--sample", action="store_true",
                   help="with --dry-run: first query query.dry_run_sample rows (paid once, replayed by the real run) "
                        "to measure the expected cost")
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import claim, config_from, print_json

    cfg = config_from(args, roles=("target",))
    claim(cfg.output.dir, args)
    rows = load_rows(cfg.data, args.split)  # --split overrides data.split only when given
    if args.dry_run:
        print_json(dry_run(cfg, rows, sample=args.sample))
        return 0
    print_json(run_query_target(cfg, rows, args.split or cfg.data.split))
    return 0
