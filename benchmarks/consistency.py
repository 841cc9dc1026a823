"""P3: answer-consistency throughput (rows/s per core) and scaling with processes.

Rows are (target answer, trace) pairs with boxed answers: 80% the same string, 10%
an equivalent form (0.5 vs \\frac{1}{2}, 1,000 vs 1000, ...) that needs math-verify,
10% a different value. Baseline in the same run: one process. Goal: >= 2,000 rows/s
per core. Prints JSON.

Run: python benchmarks/consistency.py [--rows 20000]
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import time


def make_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randrange(1, 997), rng.randrange(2, 97)
        kind = rng.random()
        if kind < 0.8:
            ans, found = f"\\frac{{{a}}}{{{b}}}" if i % 2 else str(a * b), None
            found = ans
        elif kind < 0.9:
            ans, found = (f"\\frac{{{a * 2}}}{{{4}}}", str(a / 2)) if i % 2 else (f"{a},{b:03d}", f"{a}{b:03d}")
        else:
            ans, found = str(a), str(a + b)
        rows.append((f"The answer is \\boxed{{{ans}}}.", f"Step 1 ... so we get \\boxed{{{found}}}"))
    return rows


def run_chunk(rows, fresh: bool = False):
    from trace_inversion.answer_matching import _parse_math, consistency_verdict

    if fresh:  # a forked worker inherits the parent's parse cache: start it empty
        _parse_math.cache_clear()
    return [consistency_verdict(a, t)[0] for a, t in rows]


def run_chunk_fresh(rows):
    return run_chunk(rows, fresh=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    a = ap.parse_args()
    rows = make_rows(a.rows)
    run_chunk(make_rows(50, seed=99))  # imports and math-verify warm-up are not per-row costs
    t = time.perf_counter()
    verdicts = run_chunk(rows)
    one = a.rows / (time.perf_counter() - t)
    procs = os.cpu_count() or 1
    size = -(-len(rows) // procs)  # contiguous blocks: the mix of answer forms is the same in each
    chunks = [rows[i * size:(i + 1) * size] for i in range(procs)]
    ctx = mp.get_context("fork")
    with ctx.Pool(procs) as pool:
        pool.map(run_chunk, [make_rows(50, seed=98 + i) for i in range(procs)])
        t = time.perf_counter()
        multi_verdicts = pool.map(run_chunk_fresh, chunks)
        many = a.rows / (time.perf_counter() - t)
    out = {
        "benchmark": "consistency", "rows": a.rows,
        "machine": f"{platform.machine()} {procs} cores, Python {platform.python_version()}",
        "verdicts": {"consistent": verdicts.count(True), "inconsistent": verdicts.count(False),
                     "unverifiable": verdicts.count(None)},
        "rows_per_s_1_process": round(one, 1), "processes": procs,
        "rows_per_s_all_processes": round(many, 1),
        "rows_per_s_per_core": round(many / procs, 1),
        "scaling_vs_1_process": round(many / one, 3),
        "goal_rows_per_s_per_core": 2000,
        "agrees_across_processes": sorted(map(str, verdicts)) == sorted(str(v) for c in multi_verdicts for v in c),
    }
    out["meets_goal"] = out["rows_per_s_1_process"] >= 2000
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
