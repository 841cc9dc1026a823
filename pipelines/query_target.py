"""The ``query-target`` pipeline: problems in, target answers and summaries out.

A real distilabel pipeline: ``LoadDataFromDicts >> QueryTarget``. distilabel's own
cache is off (its resume hangs, upstream #1065); the project's request cache makes
a rerun after a crash free for every finished request. Output: parquet under
``<output.dir>/target_query/data/{target,failures}/train.parquet`` plus
``stats.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from trace_inversion.config import RunConfig
from trace_inversion.data import load_rows
from trace_inversion.io import write_json, write_split
from trace_inversion.pipelines.common import (report_stage, retry_stats, count_reasons, crashed_rows, distilabel_cache, mark_finished, reorder,
                                             require_models, reuse_finished, run_pipeline, stage_fingerprint,
                                             step_kwargs, step_timings)


def build_pipeline(cfg: RunConfig, rows: list[dict], name: str = "query-target"):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.target_query import QueryTarget

    require_models(cfg, "target")
    kw = step_kwargs(cfg, "target", len(rows))
    with Pipeline(name=f"{name}-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_problems", data=rows, batch_size=kw["input_batch_size"])
        query = QueryTarget(
            name="query_target",
            **kw,
            require_summary=cfg.query.require_summary,
            system_prompt=cfg.query.system_prompt,
            refusal_patterns=cfg.query.refusal_patterns,
            budget_usd=cfg.budget_usd,
        )
        load >> query
    return pipeline


def run_query_target(cfg: RunConfig, rows: list[dict] | None = None, split: str = "train") -> dict:
    """Run the pipeline; returns stats and output paths."""
    t0 = time.time()
    rows = rows if rows is not None else load_rows(cfg.data, split)
    out_dir = Path(cfg.output.dir) / "target_query"
    fp = stage_fingerprint(cfg, "query-target", rows)
    done = reuse_finished(out_dir, fp, cfg)
    if done is not None:
        return report_stage("query-target", done, cfg, summary(done))
    pipeline = build_pipeline(cfg, rows)
    result = reorder(run_pipeline(pipeline, cfg, "query-target"), [r["id"] for r in rows])
    crashed_rows(result, "query_attempts", "query_error")
    for r in result:
        if r.get("query_attempts") is None:
            r.update(query_attempts=0, target_cost_usd=0.0)
    ok = [r for r in result if r["query_error"] is None]
    failed = [r for r in result if r["query_error"] is not None]
    # Per-run facts (attempts) go to stats, not rows: a resumed run writes identical data.
    ok_rows = [{k: v for k, v in r.items() if k != "query_attempts"} for r in ok]
    failed_rows = [{k: v for k, v in r.items() if k != "query_attempts"} for r in failed]
    write_split(out_dir, "target", ok_rows, like=failed_rows)
    write_split(out_dir, "failures", failed_rows, like=ok_rows)
    reasons = count_reasons(failed, "query_error")
    stats = {
        "rows_in": len(rows),
        "rows_out": len(ok),
        "failures": len(failed),
        "failure_reasons": reasons,
        "cost_usd": sum(r["target_cost_usd"] or 0 for r in result),  # what the dataset cost to produce
        "new_cost_usd": (step_timings(cfg, "query_target") or {}).get("cost_usd", 0.0),  # paid in this run
        "input_tokens": sum((r["target_usage"] or {}).get("input_tokens", 0) for r in result),
        "output_tokens": sum((r["target_usage"] or {}).get("output_tokens", 0) for r in result),
        "http_attempts": sum(r["query_attempts"] for r in result),
        **retry_stats(cfg, "query_target"),
        "seconds": round(time.time() - t0, 2),
        "output_dir": str(out_dir),
    }
    write_json(stats, out_dir / "stats.json")
    from trace_inversion.hub_cards.card import write_stage_card

    write_stage_card(out_dir, "query-target", cfg, stats, {"target": len(ok), "failures": len(failed)})
    if not failed:  # failed rows (e.g. retries exhausted, budget) are retried by the next run
        mark_finished(out_dir, fp, stats)
    return report_stage("query-target", stats, cfg, summary(stats))


def summary(stats: dict) -> str:
    """The stage's key counts for its console line."""
    text = (f"{stats['rows_out']:,} of {stats['rows_in']:,} rows answered · {stats['failures']:,} failed · "
            f"${stats.get('new_cost_usd') or 0:.4f} paid")
    if stats.get("retried_requests"):
        text += f" · {stats['retried_recovered']:,}/{stats['retried_requests']:,} retries recovered"
    return text


def dry_run(cfg: RunConfig, rows: list[dict]) -> dict:
    """Query a sample (through the cache: nothing here is paid twice later) and
    extrapolate cost and tokens to all rows."""
    import asyncio
    import random

    from trace_inversion.cache import RequestCache
    from trace_inversion.clients import cost_of, make_client
    from trace_inversion.toy_world import ToyWorld

    k = min(cfg.query.dry_run_sample, len(rows))
    sample = random.Random(cfg.seed).sample(rows, k)
    client = make_client(cfg.models.target, RequestCache(cfg.resolved_cache_path, secret_env=(cfg.models.target.api_key_env,)), world=ToyWorld.from_config(cfg.data.toy))
    sys_msg = [{"role": "system", "content": cfg.query.system_prompt}] if cfg.query.system_prompt else []

    async def go():
        try:
            return await client.query_many([sys_msg + [{"role": "user", "content": r["problem"]}] for r in sample])
        finally:
            await client.aclose()

    results = asyncio.run(go())
    ok = [r for r in results if r.ok]
    costs = [cost_of(r.response.get("usage", {}), cfg.models.target) for r in ok]
    mean = sum(costs) / len(costs) if costs else 0.0
    tok_in = sum(r.response["usage"].get("input_tokens", 0) for r in ok) / max(1, len(ok))
    tok_out = sum(r.response["usage"].get("output_tokens", 0) for r in ok) / max(1, len(ok))
    return {
        "rows": len(rows), "sample": k, "sample_failures": k - len(ok),
        "sample_cost_usd": round(client.usage.cost_usd, 6),
        "mean_cost_per_row_usd": round(mean, 6), "estimated_total_cost_usd": round(mean * len(rows), 4),
        "mean_input_tokens": round(tok_in, 1), "mean_output_tokens": round(tok_out, 1),
        "estimated_output_tokens": int(tok_out * len(rows)),
        "within_budget": None if cfg.budget_usd is None else mean * len(rows) <= cfg.budget_usd,
    }
