"""The demo: every implemented stage on the embedded toy world, offline, on a CPU.

Stages run today: the toy world's problems, the ``query-target`` distilabel pipeline
against the programmatic target (answers + lossy summaries through the request
cache), and the programmatic surrogate's visible traces (also through the cache),
with a report of what an attacker gets from each. Later stages (inverter training,
inversion with verified synthesis, releases, students) are added to this command as
they land. Rerunning after Ctrl-C continues from the request cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from trace_inversion.config import deep_merge, load_config


def _surrogate_rows(cfg, rows: list[dict]) -> list[dict]:
    from tqdm.auto import tqdm

    from trace_inversion.cache import RequestCache
    from trace_inversion.clients import make_client
    from trace_inversion.toy_world import ToyWorld, check_steps, parse_problem, trace_final_value

    world = ToyWorld.from_config(cfg.data.toy)
    client = make_client(cfg.models.surrogate, RequestCache(cfg.resolved_cache_path), world=world)
    out = []
    results = client.query_many_sync([[{"role": "user", "content": r["problem"]}] for r in rows])
    for r, res in tqdm(list(zip(rows, results)), desc="surrogate traces", unit="row"):
        text = res.response["answer"]
        trace = text.split("<think>")[-1].split("</think>")[0].strip() if "</think>" in text else None
        p = parse_problem(r["problem"], r["id"])
        chk = check_steps(p, trace or "")
        out.append({"id": r["id"], "surrogate_output": text, "surrogate_trace": trace,
                    "surrogate_correct": trace_final_value(trace or "") == p.answer, **{f"steps_{k}": v for k, v in chk.items()}})
    return out


def run_demo(output: Optional[str] = None, seeds: int = 1, config_path: Optional[str] = None,
             overrides: Optional[dict] = None) -> str:
    from trace_inversion.data import load_rows
    from trace_inversion.io import write_json, write_parquet
    from trace_inversion.pipelines.query_target import run_query_target
    from trace_inversion.toy_world import boxed_value

    base = Path(output or "runs/demo")
    lines = ["# trace-inversion demo (toy world)", "",
             "| seed | problems | target rows | failures | target accuracy | surrogate accuracy | surrogate all steps right | summary values shown | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    all_stats = {}
    for seed in range(seeds):
        t0 = time.time()
        over = deep_merge(overrides or {}, {"seed": seed, "data": {"toy": {"seed": seed}},
                                             "output": {"dir": str(base / f"seed{seed}")}})
        cfg = load_config(config_path, over)
        rows = load_rows(cfg.data, "train")
        stats = run_query_target(cfg, rows)
        from trace_inversion.io import read_split

        target = {r["id"]: r for r in read_split(Path(cfg.output.dir) / "target_query", "target")}
        ref = {r["id"]: r["reference_answer"] for r in rows}
        acc = sum(boxed_value(t["target_answer"]) == ref[i] for i, t in target.items()) / max(1, len(rows))
        sur = _surrogate_rows(cfg, rows)
        write_parquet(sur, Path(cfg.output.dir) / "surrogate" / "data" / "train.parquet")
        sacc = sum(s["surrogate_correct"] for s in sur) / max(1, len(sur))
        sall = sum(s["steps_all_correct"] for s in sur) / max(1, len(sur))
        shown = sum(len((t["target_summary"] or "").split(";")) for t in target.values()) / max(1, len(target))
        secs = time.time() - t0
        all_stats[seed] = {**stats, "target_accuracy": acc, "surrogate_accuracy": sacc, "surrogate_all_steps": sall}
        lines.append(f"| {seed} | {len(rows)} | {stats['rows_out']} | {stats['failures']} | {acc:.1%} | {sacc:.1%} | "
                     f"{sall:.1%} | {shown:.1f} of {cfg.data.toy.n_ops} | {secs:.1f} |")
    lines += ["", "The target is always right but shows only every k-th running value; the surrogate shows",
              "every step but errs on long chains. Inversion (recovering the target's full steps from its",
              "answer and summary) is the stage that closes this gap."]
    report = "\n".join(lines)
    base.mkdir(parents=True, exist_ok=True)
    (base / "report.md").write_text(report + "\n")
    write_json(all_stats, base / "stats.json")
    return report
