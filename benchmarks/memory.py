"""P5: peak memory does not grow with the dataset: peak memory of the CLI process and
every worker it starts (PSS summed: shared pages of forked workers counted once; RSS
summed is also reported), sampled every 100 ms, for query-target on 10k vs 100k rows.

The target is the in-process toy target (no HTTP), so the figure is the pipeline's own
footprint. Baseline in the same run: the 10k-row peak. Goal: the 100k-row peak within
+-10% of it.

Run: python benchmarks/memory.py [--small 10000] [--large 100000]

``--million`` (``--million-rows N`` to change the size) runs one 1M-row query-target
instead and checks it stays under 1 GiB peak PSS; it also reports its wall time over
the ideal bound. For the in-process toy target no request waits on a network, so
concurrency cannot overlap anything: the bound is the pure compute of the toy target's
calls (parsing each problem, ``ToyWorld.target_response``, the usage count: what
``ToyTargetClient`` does per request), timed here on a sample of the same problems in
one thread and scaled to the row count. The rest of the wall time is the pipeline's
own work (distilabel's queues and processes, the request cache, the parquet shards).

Results: ``benchmarks/memory_results.md``.
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml


def peak_memory(cmd: list[str]) -> tuple[float, float, float]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        pss = rss = 0
        try:
            for p in [root] + root.children(recursive=True):
                try:
                    m = p.memory_full_info()
                    pss, rss = pss + getattr(m, "pss", m.rss), rss + m.rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return peak_pss / 2**20, peak_rss / 2**20, time.perf_counter() - t


def run(rows: int, work: Path) -> dict:
    cfg = {"name": f"bench-mem-{rows}", "data": {"source": "toy", "toy": {"n_train": rows, "n_test": 0}},
           "models": {"target": {"backend": "toy", "model": "toy-target"}}, "output": {"dir": str(work / str(rows))}}
    path = work / f"cfg-{rows}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    pss, rss, secs = peak_memory([sys.executable, "-m", "trace_inversion.cli", "query-target", "--config", str(path)])
    return {"rows": rows, "peak_pss_mib": round(pss, 1), "peak_rss_sum_mib": round(rss, 1), "seconds": round(secs, 1)}


def toy_target_bound(rows: int, sample: int = 20_000) -> dict:
    """Seconds of pure toy-target compute for ``rows`` requests: ``sample`` calls of the
    same world's first problems timed in one thread, scaled to ``rows``."""
    from trace_inversion.config import ToyWorldConfig
    from trace_inversion.data.columnar import ToyRows
    from trace_inversion.toy.world import ToyWorld, parse_problem

    toy = ToyWorldConfig(n_train=min(rows, sample), n_test=0)
    texts = [r["problem"] for r in ToyRows(toy, "train")]
    world = ToyWorld.from_config(toy)
    t = time.perf_counter()
    for text in texts:  # ToyTargetClient._call for toy-target, without the event loop
        p = parse_problem(text)
        r = world.target_response(p)
        len(text.split()), len(r["answer"].split()), len(r["hidden_trace"].split())
    per_call = (time.perf_counter() - t) / len(texts)
    return {"what": "pure compute of the toy target's calls (parse, target_response, usage), one thread, "
                    f"timed on {len(texts):,} calls and scaled", "per_call_us": round(per_call * 1e6, 2),
            "seconds": round(per_call * rows, 1)}


def million(rows: int, work: Path) -> None:
    res = run(rows, work)
    bound = toy_target_bound(rows)
    print(json.dumps({"benchmark": "memory-million", "machine": f"{platform.machine()}, {psutil.cpu_count()} cpus",
                      "run": res, "goal": "peak_pss_mib < 1024", "meets_goal": res["peak_pss_mib"] < 1024,
                      "ideal_bound": bound, "wall_over_bound": round(res["seconds"] / bound["seconds"], 1)}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--million", action="store_true", help="one 1M-row run: peak PSS under 1 GiB, wall time over the "
                                                           "ideal bound")
    ap.add_argument("--million-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    if args.million:
        million(args.million_rows, work)
        return
    small, large = run(args.small, work), run(args.large, work)
    ratio = large["peak_pss_mib"] / small["peak_pss_mib"]
    print(json.dumps({"benchmark": "memory", "baseline": "the 10k-row run's peak PSS, measured in this run","machine": f"{platform.machine()}, {psutil.cpu_count()} cpus",
                      "small": small, "large": large, "large_over_small": round(ratio, 3),
                      "goal": "0.9 <= large_over_small <= 1.1", "meets_goal": 0.9 <= ratio <= 1.1}, indent=2))


if __name__ == "__main__":
    main()
