"""P2: inversion pipeline throughput vs raw vLLM on the same prompts.

Baseline, measured in the same run and the same engine mode: ``vllm.LLM.chat`` on the
inverter prompts of N toy targets with the pipeline's sampling parameters and engine
settings, and the engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), as the
pipeline's ``VLLM`` runs it inside its distilabel step (engine start timed separately).
An earlier baseline ran vLLM's multiprocess engine, 1.37x faster than in-process on 2
cores, and so hid ~30% of the pipeline's overhead.
Pipeline: ``run_invert`` (distilabel pipeline, request cache, filters, answer
consistency, parquet and card) with one sample per row and no resampling, on a fresh
cache. Ratios of generated tokens per second, with the one-time engine start taken
out of the pipeline's wall time (``ratio_vs_raw``, goal >= 0.90; both engine starts are
printed) and of the generation phase alone (``ratio_generation_vs_raw``). Prints JSON.

The pipeline's cost beyond generation is mostly per run, not per token: measured
2026-11-30 at 2,048 rows, ~3 s (the engine's shutdown in the step's unload ~1.5 s,
vLLM's and the project's garbage collection included; distilabel's start and finish;
the request cache's commits; writing the parquet, card and stats). So the ratio depends
on how long a run generates: the default, 2,048 traces of 256 tokens, is still far
shorter than real inverted traces (thousands of tokens each); ``--max-new-tokens 48``
shows the short-run end (``overhead_seconds`` is printed either way).

Run: python benchmarks/inversion.py [--rows 2048] [--max-new-tokens 256]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


RAW = r"""
import json, sys, time
from vllm import LLM, SamplingParams

job = json.loads(open(sys.argv[1]).read())
t = time.perf_counter()
llm = LLM(model=job["model"], dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
          enable_chunked_prefill=False)  # as the project's VLLM does on CPU (seeded requests)
start_s = time.perf_counter() - t
params = [SamplingParams(n=1, temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.05,
                         max_tokens=job["max_new_tokens"], seed=job["seed"]) for _ in job["convs"]]
t = time.perf_counter()
outs = llm.chat(job["convs"], params, use_tqdm=False)
raw_s = time.perf_counter() - t
print(json.dumps({"start_s": start_s, "raw_s": raw_s, "raw_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}))
llm.llm_engine.engine_core.shutdown()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    a = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from trace_inversion.config import load_config
    from trace_inversion.pipelines.invert import load_inversion_rows, run_invert
    from trace_inversion.pipelines.query_target import run_query_target
    from trace_inversion.prompts import inverter_messages
    from trace_inversion.toy.tiny_models import cached_tiny_lm

    work = Path(tempfile.mkdtemp(prefix="bench-inversion-"))
    model = cached_tiny_lm(Path(__file__).resolve().parent.parent / ".cache" / "tiny-models")
    sampling = {"max_new_tokens": a.max_new_tokens, "temperature": 0.7, "top_p": 0.9, "top_k": 50,
                "repetition_penalty": 1.05}
    cfg = load_config(None, {"data": {"toy": {"n_train": a.rows}}, "output": {"dir": str(work / "out")},
                             "models": {"inverter": {"backend": "vllm", "model": str(model), "sampling": sampling}},
                             # overlap metrics are analysis, not generation: off here (the raw
                             # baseline computes none); the JSON says so
                             "invert": {"max_attempts": 1, "max_model_len": 512, "ground_truth_column": None}})
    run_query_target(cfg)
    rows = load_inversion_rows(cfg)
    convs = [inverter_messages(r["problem"], r["target_answer"], r["target_summary"]) for r in rows]

    # The raw baseline runs in a child process, with the engine in-process there, as the
    # pipeline's VLLM runs it inside its distilabel step; this process stays torch-free
    # (distilabel forks its workers from it: a fork after torch ran here can deadlock).
    import subprocess

    job = work / "raw.json"
    job.write_text(json.dumps({"model": str(model), "convs": convs, "max_new_tokens": a.max_new_tokens,
                               "seed": cfg.seed}))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    r = subprocess.run([sys.executable, "-c", RAW, str(job)], env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"raw baseline failed: {r.stderr[-2000:]}")
    raw = json.loads(r.stdout.strip().splitlines()[-1])
    start_s, raw_s, raw_tokens = raw["start_s"], raw["raw_s"], raw["raw_tokens"]

    t = time.perf_counter()
    stats = run_invert(cfg, rows)
    pipe_s = time.perf_counter() - t
    from trace_inversion.models.cache import RequestCache
    import sqlite3

    with sqlite3.connect(str(cfg.resolved_cache_path)) as c:
        pipe_tokens = sum(json.loads(r[0])["usage"]["output_tokens"]
                          for r in c.execute("SELECT response FROM requests WHERE backend = 'vllm'"))
    raw_tps = raw_tokens / raw_s
    tm = stats["inverter_timings"]  # recorded by the step inside its distilabel worker
    load_s = tm["engine_load_seconds"]
    out = {
        "benchmark": "inversion", "rows": len(rows), "max_new_tokens": a.max_new_tokens,
        "baseline": "raw vllm.LLM.chat on the same prompts, sampling and engine settings, engine in-process "
                    "(VLLM_ENABLE_V1_MULTIPROCESSING=0) as in the pipeline's step, measured in this run",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, vLLM CPU",
        "raw_tokens": raw_tokens, "raw_seconds": round(raw_s, 2), "raw_tokens_per_s": round(raw_tps, 1),
        "raw_engine_start_seconds": round(start_s, 2),
        "pipeline_tokens": pipe_tokens, "pipeline_seconds": round(pipe_s, 2),
        "pipeline_engine_start_seconds": round(load_s, 2),
        "pipeline_generation_seconds": tm["generation_seconds"],
        "pipeline_tokens_per_s": round(pipe_tokens / (pipe_s - load_s), 1),
        # whole pipeline (distilabel, cache, filters, consistency, parquet, card), engine start excluded
        "ratio_vs_raw": round(pipe_tokens / (pipe_s - load_s) / raw_tps, 3),
        # the generation phase only (cache lookups and commits included)
        "ratio_generation_vs_raw": round(pipe_tokens / tm["generation_seconds"] / raw_tps, 3),
        # wall time outside the engine's start and the generation calls: distilabel, filters,
        # consistency, length statistics, the engine's shutdown, writing
        "overhead_seconds": round(pipe_s - load_s - tm["generation_seconds"], 2),
        "kept": stats["kept"], "rejected": stats["rejected"], "overlap_metrics": False, "goal_ratio_vs_raw": 0.90,
    }
    out["meets_goal"] = out["ratio_vs_raw"] >= 0.90
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
