"""Helpers shared by the pipelines: building, running and reading stage pipelines (the stage
runner, with its fingerprint and finished mark, is ``stage.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from trace_inversion.config import ConfigError, RunConfig


def require_models(cfg: RunConfig, *roles: str) -> None:
    missing = [r for r in roles if getattr(cfg.models, r) is None]
    if missing:
        raise ConfigError([f"models.{r}: missing; fix: add a {r} model (see `trace-inversion config show`)"
                           for r in missing])


def step_kwargs(cfg: RunConfig, role: str, total_rows: int, max_model_len: int | None = None) -> dict:
    """Arguments every ModelStep takes, for the model of ``role``: its distilabel LLM
    (resolved by the registry; the toy world's settings go to the toy backend only),
    the run's request cache, batch size, resources (GPU placement) and progress."""
    from trace_inversion.models import llm_from_config
    from trace_inversion.models.cached import local_chunk_size

    m = getattr(cfg.models, role)
    llm = llm_from_config(m, toy_world=cfg.data.toy if m.backend == "toy" else None, max_model_len=max_model_len)
    # local engines: 256 rows, or for vLLM at least the sequences its engine runs at once
    batch = max(64, m.concurrency * 4) if m.backend not in ("vllm", "transformers") else max(256, local_chunk_size(llm))
    kw = dict(llm=llm, cache_path=str(cfg.resolved_cache_path.resolve()), input_batch_size=batch,
              total_rows=total_rows, resources=step_resources(cfg, role), retry_failed=cfg.runtime.retry_failed,
              progress_dir=str(progress_dir(cfg)))
    return kw


def progress_dir(cfg: RunConfig) -> Path:
    return (Path(cfg.output.dir) / ".progress").resolve()


def run_distiset(pipeline, cfg: RunConfig | None = None, stage: str | None = None):
    """Run with distilabel's cache off (its resume hangs, upstream #1065; the request
    cache is the resume mechanism) and the write-buffer schema fix applied; on Ray
    when ``cfg.runtime.ray`` is set (the same DAG, steps as Ray actors). tqdm's monitor
    thread is stopped first: a fork while it holds tqdm's lock hangs the step process.
    """
    from trace_inversion.distilabel_compat import patch_poll_intervals, patch_write_buffer, stop_tqdm_monitor

    patch_poll_intervals()
    patch_write_buffer()
    stop_tqdm_monitor()
    # distilabel reloads <cache>/pipeline.yaml even with use_cache=False; a run killed
    # while writing it leaves an empty file that crashes every later run. Its cache is
    # never used here, so the stale copy goes (this run writes it again).
    Path(pipeline._cache_location["pipeline"]).unlink(missing_ok=True)
    from trace_inversion.console import StageView, file_handler, log_path, quiet_distilabel_console

    quiet_distilabel_console()
    if cfg is not None and cfg.runtime.ray:
        import os

        address = cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS")
        kwargs = {"address": address} if address else {"include_dashboard": False}
        kwargs["log_to_driver"] = False
        pipeline = pipeline.ray(ray_init_kwargs=kwargs)
    import logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        if cfg is None:
            return pipeline.run(use_cache=False)
        stage = stage or pipeline.name
        with StageView(stage, progress_dir(cfg)):
            return pipeline.run(use_cache=False, logging_handlers=[file_handler(log_path(cfg.output.dir, stage))])
    finally:
        # distilabel leaves the root logger on a queue it has closed: any later record
        # (a library logging in this process) would print "--- Logging error ---".
        root.handlers[:], root.level = saved


def run_pipeline(pipeline, cfg: RunConfig | None = None, stage: str | None = None) -> list[dict]:
    """Run (see ``run_distiset``) and return the single leaf step's rows."""
    return run_distiset(pipeline, cfg, stage)["default"]["train"].to_list()


def run_pipeline_files(pipeline, cfg: RunConfig | None = None, stage: str | None = None) -> list[Path]:
    """Run (see ``run_distiset``) and return the parquet files distilabel wrote for the
    single leaf step, in the order written: its rows, for reading lazily (polars) instead
    of as a list of dicts. distilabel's ``Distiset`` is not built: it would load every
    row through ``datasets`` at the end of the run, in this process, while the step
    processes still hold their memory; nor are the batches saved for distilabel's resume."""
    import gc

    import distilabel.pipeline.local as local
    from distilabel import constants

    from distilabel.pipeline.batch_manager import _BatchManager
    from distilabel.pipeline.write_buffer import _WriteBuffer

    make, keep, init = local.create_distiset, _BatchManager.write_batch_data, _WriteBuffer.__init__

    def bigger_files(self, *a, **kw):
        init(self, *a, **kw)
        # a file per 2,000 rows (distilabel: 50): a million rows make 500 files, not 20,000
        self._buffers_dump_batch_size = {step: 2000 for step in self._buffers_dump_batch_size}

    _WriteBuffer.__init__ = bigger_files
    local.create_distiset = lambda *a, **kw: None  # only for this run: the rows are read from the files
    # nor is every batch saved as JSON for distilabel's own resume, never used (the request cache is)
    _BatchManager.write_batch_data = lambda self, batch, path: None
    # distilabel forks its step processes: a full collection in a child writes to every
    # object it inherited, turning the shared pages private in both processes (tens of
    # MiB, at a moment that depends on how many rows went by). Frozen objects are skipped.
    gc.collect()
    gc.freeze()
    try:
        run_distiset(pipeline, cfg, stage)
    finally:
        gc.unfreeze()
        local.create_distiset, _BatchManager.write_batch_data, _WriteBuffer.__init__ = make, keep, init

    (leaf,) = list(pipeline.dag.leaf_steps)
    folder = Path(pipeline._cache_location["data"]) / constants.STEPS_OUTPUTS_PATH / leaf
    return sorted(folder.glob("*.parquet"))


def report_stage(stage: str, stats: dict, cfg: RunConfig, summary: str) -> dict:
    """The stage's one console line (``summary``: its key counts); returns ``stats``."""
    from trace_inversion.console import log_path, say, stage_line

    say(stage_line(stage, summary, stats.get("seconds", 0.0), log_path(cfg.output.dir, stage),
                   reused=bool(stats.get("reused"))))
    return stats


def step_resources(cfg: RunConfig, role: str):
    """Replicas per model step (Ray), and GPUs: a local role takes tensor_parallel_size
    devices, which distilabel's placement gives it to itself (two local roles of one
    pipeline never share a device unless ``cuda_devices`` says so)."""
    from distilabel.steps import StepResources

    m = getattr(cfg.models, role)
    if cfg.runtime.ray:  # Ray places vLLM steps itself (a placement group of tensor_parallel_size GPUs)
        gpus = m.tensor_parallel_size if (m.backend == "vllm" and m.tensor_parallel_size > 1) else None
    else:
        gpus = m.tensor_parallel_size if m.backend in ("vllm", "transformers") else None
    return StepResources(replicas=cfg.runtime.replicas if cfg.runtime.ray else 1, gpus=gpus)


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


def generation_lengths(cfg: RunConfig, role: str, texts: list, finish_reasons: list | None, of: str,
                       think: bool = False, output_tokens: list | None = None) -> dict:
    """Length and cap statistics (``scoring.lengths.length_stats``) of the generations of
    the model of ``role``, in its own tokens where its tokenizer loads offline, else in
    word tokens (the ``unit`` says which); ``of`` says what text was measured.
    ``finish_reasons`` None: a part of the generations (e.g. traces), no cap statistics;
    ``output_tokens``: the backend's counts of generated tokens (``length_stats``)."""
    from trace_inversion.scoring.lengths import counter_for_model, length_stats, summarize_lengths

    m = getattr(cfg.models, role)
    counter = counter_for_model(m)
    if finish_reasons is None:
        lengths = [None if t is None else counter.count(t) for t in texts]
        return dict(summarize_lengths(lengths, [None] * len(lengths), counter.unit), of=of)
    cap = m.sampling.max_new_tokens if m is not None else None
    return dict(length_stats(texts, finish_reasons, counter, cap=cap, think=think, output_tokens=output_tokens), of=of)


def surrogate_lengths(cfg: RunConfig, rows: list[dict]) -> dict:
    """The surrogate's lengths: whole outputs (what the cap limits; a reasoning model's
    output without ``</think>`` was cut) and the traces of complete ones."""
    ok = [r for r in rows if r.get("surrogate_trace")]
    return {"surrogate": generation_lengths(cfg, "surrogate", [r.get("surrogate_output") for r in rows],
                                            [r.get("surrogate_finish_reason") for r in rows],
                                            "whole output (trace + answer)", think=True,
                                            output_tokens=[r.get("surrogate_output_tokens") for r in rows]),
            "surrogate_traces": generation_lengths(cfg, "surrogate", [r["surrogate_trace"] for r in ok], None,
                                                   "trace (inside <think>) of complete outputs")}


def distilabel_cache(cfg: RunConfig) -> str:
    return str(Path(cfg.output.dir) / ".distilabel")


def retry_stats(cfg: RunConfig, *step_names: str) -> dict:
    """What ``--retry-failed`` did in this run: fresh requests for content failures, and
    how many of them came back usable."""
    t = [step_timings(cfg, n) or {} for n in step_names]
    return {"retried_requests": sum(x.get("retried_requests", 0) for x in t),
            "retried_recovered": sum(x.get("retried_recovered", 0) for x in t)}


def step_timings(cfg: RunConfig, step_name: str) -> dict | None:
    """What a ModelStep recorded about its time (engine load vs generation)."""
    import json

    p = cfg.resolved_cache_path.resolve().parent / "timings" / f"{step_name}.json"
    return json.loads(p.read_text()) if p.exists() else None
