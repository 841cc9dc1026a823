"""Helpers shared by the pipelines: building, running and writing stage folders."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from trace_inversion.config import ConfigError, RunConfig


def require_models(cfg: RunConfig, *roles: str) -> None:
    missing = [r for r in roles if getattr(cfg.models, r) is None]
    if missing:
        raise ConfigError([f"models.{r}: missing; fix: add a {r} model (see `trace-inversion config show`)"
                           for r in missing])


def step_kwargs(cfg: RunConfig, role: str, total_rows: int) -> dict:
    """Arguments every ModelStep takes, for the model of ``role``."""
    m = getattr(cfg.models, role)
    batch = max(64, m.concurrency * 4) if m.backend not in ("vllm", "transformers") else 256
    kw = dict(model=m.model_dump(mode="json"), cache_path=str(cfg.resolved_cache_path.resolve()),
              toy_world=cfg.data.toy.model_dump(mode="json"), input_batch_size=batch, total_rows=total_rows)
    return kw


def run_distiset(pipeline):
    """Run with distilabel's cache off (its resume hangs, upstream #1065; the request
    cache is the resume mechanism) and the write-buffer schema fix applied."""
    from trace_inversion.distilabel_compat import patch_write_buffer

    patch_write_buffer()
    return pipeline.run(use_cache=False)


def run_pipeline(pipeline) -> list[dict]:
    """Run (see ``run_distiset``) and return the single leaf step's rows."""
    return run_distiset(pipeline)["default"]["train"].to_list()


def crashed_rows(rows: Iterable[dict], marker: str, error_col: str) -> None:
    """distilabel fills a crashed batch with None; give such rows a reason."""
    for r in rows:
        if r.get(marker) is None and r.get(error_col) is None:
            r[error_col] = "internal error: step crashed (see the log)"


def reorder(rows: list[dict], ids: list[str]) -> list[dict]:
    order = {i: n for n, i in enumerate(ids)}
    return sorted(rows, key=lambda r: order.get(r["id"], len(order)))


def count_reasons(rows: Iterable[dict], col: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if r.get(col):
            out[r[col]] = out.get(r[col], 0) + 1
    return out


def distilabel_cache(cfg: RunConfig) -> str:
    return str(Path(cfg.output.dir) / ".distilabel")


def step_timings(cfg: RunConfig, step_name: str) -> dict | None:
    """What a ModelStep recorded about its time (engine load vs generation)."""
    import json

    p = cfg.resolved_cache_path.resolve().parent / "timings" / f"{step_name}.json"
    return json.loads(p.read_text()) if p.exists() else None
