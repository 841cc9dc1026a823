"""P4: re-running a finished run costs at most 5% of the first run and makes no model call.

A run here is query-target against the local toy server (OpenAI Responses wire format,
fixed latency, real HTTP through the request cache) followed by invert (toy inverter).
Each run is a fresh CLI process, as a user would run it. Baseline in the same run: the
first run's wall time. Goal: rerun <= 5% of it, 0 requests reaching the server.

Run: python benchmarks/resume.py [--rows 2000] [--latency 0.2] [--concurrency 32]
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    from trace_inversion.local_services.servers import start_toy_server

    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    with start_toy_server(work / "logs", latency=args.latency) as srv:
        cfg = {"name": "bench-resume", "data": {"source": "toy", "toy": {"n_train": args.rows, "n_test": 0}},
               "models": {"target": {"backend": "openai-responses", "model": "toy-target", "base_url": srv.base_url,
                                     "concurrency": args.concurrency, "reasoning_effort": "medium",
                                     "reasoning_summary": "auto"},
                          "inverter": {"backend": "toy", "model": "toy-inverter"}},
               "output": {"dir": str(work / "out")}}
        path = work / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))

        def run() -> float:
            t = time.perf_counter()
            for cmd in ("query-target", "invert"):
                subprocess.run([sys.executable, "-m", "trace_inversion.cli", cmd, "--config", str(path)], check=True,
                               capture_output=True)
            return time.perf_counter() - t

        first = run()
        calls_first = srv.stats()["total"]
        rerun = run()
        calls_rerun = srv.stats()["total"] - calls_first
    ratio = rerun / first
    print(json.dumps({
        "benchmark": "resume", "baseline": "the first run's wall time, measured in this run", "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "rows": args.rows, "latency_s": args.latency, "concurrency": args.concurrency,
        "first_run_s": round(first, 2), "rerun_s": round(rerun, 2), "rerun_over_first": round(ratio, 4),
        "model_calls_first": calls_first, "model_calls_rerun": calls_rerun,
        "goal": "rerun_over_first <= 0.05 and model_calls_rerun == 0",
        "meets_goal": ratio <= 0.05 and calls_rerun == 0,
    }, indent=2))


if __name__ == "__main__":
    main()
