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
from trace_inversion.io import write_json, write_parquet


def build_pipeline(cfg: RunConfig, rows: list[dict], name: str = "query-target"):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.target_query import QueryTarget

    if cfg.models.target is None:
        from trace_inversion.config import ConfigError

        raise ConfigError(["models.target: missing; fix: add a target model (see `trace-inversion config show`)"])
    batch = max(64, cfg.models.target.concurrency * 4)
    cache_dir = Path(cfg.output.dir) / ".distilabel"
    with Pipeline(name=f"{name}-{cfg.name}", cache_dir=str(cache_dir)) as pipeline:
        load = LoadDataFromDicts(name="load_problems", data=rows, batch_size=batch)
        query = QueryTarget(
            name="query_target",
            target=cfg.models.target.model_dump(mode="json"),
            cache_path=str(cfg.resolved_cache_path.resolve()),
            toy_world=cfg.data.toy.model_dump(mode="json"),
            input_batch_size=batch,
            total_rows=len(rows),
        )
        load >> query
    return pipeline


def run_query_target(cfg: RunConfig, rows: list[dict] | None = None, split: str = "train") -> dict:
    """Run the pipeline; returns stats and output paths."""
    t0 = time.time()
    rows = rows if rows is not None else load_rows(cfg.data, split)
    out_dir = Path(cfg.output.dir) / "target_query"
    pipeline = build_pipeline(cfg, rows)
    distiset = pipeline.run(use_cache=False)
    result = distiset["default"]["train"].to_list()
    order = {r["id"]: i for i, r in enumerate(rows)}
    result.sort(key=lambda r: order[r["id"]])
    for r in result:
        if r.get("query_attempts") is None:  # distilabel filled a crashed batch with None
            r.update(query_error="internal error: step crashed (see the log)", query_attempts=0, target_cost_usd=0.0)
    ok = [r for r in result if r["query_error"] is None]
    failed = [r for r in result if r["query_error"] is not None]
    write_parquet(ok, out_dir / "data" / "target" / "train.parquet")
    write_parquet(failed, out_dir / "data" / "failures" / "train.parquet")
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r["query_error"]] = reasons.get(r["query_error"], 0) + 1
    stats = {
        "rows_in": len(rows),
        "rows_out": len(ok),
        "failures": len(failed),
        "failure_reasons": reasons,
        "cost_usd": sum(r["target_cost_usd"] or 0 for r in result),
        "input_tokens": sum((r["target_usage"] or {}).get("input_tokens", 0) for r in result),
        "output_tokens": sum((r["target_usage"] or {}).get("output_tokens", 0) for r in result),
        "http_attempts": sum(r["query_attempts"] for r in result),
        "seconds": round(time.time() - t0, 2),
        "output_dir": str(out_dir),
    }
    write_json(stats, out_dir / "stats.json")
    return stats
