"""The ``student-data`` pipeline: the paper's student conditions from stage outputs.

Joins, by row id, the target-query output (answers, summaries, and target traces when
the target is open), the surrogate's traces on the same problems, and the inversion
output (first samples and verified traces); then one distilabel branch per condition
(``FormatStudentSFT``). Output ``<output.dir>/student_data`` with one config per
condition (``messages`` in TRL's conversational format) and ``stats.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from trace_inversion.config import RunConfig
from trace_inversion.io import read_split, write_json, write_split
from trace_inversion.pipelines.common import (distilabel_cache, mark_finished, reorder, report_stage,
                                             reuse_finished, run_distiset, stage_fingerprint)

DEFAULT_CONDITIONS = ["answer_only", "summary_answer", "surrogate_traces", "inverted_unfiltered",
                      "inverted_verified", "target_traces"]


def join_sources(target_dir: Path, surrogate_dir: Optional[Path], inversion_dir: Optional[Path]) -> list[dict]:
    rows = {r["id"]: dict(r) for r in read_split(target_dir, "target")}
    if surrogate_dir is not None:
        for r in read_split(surrogate_dir, "traces"):
            if r["id"] in rows:
                rows[r["id"]].update(surrogate_trace=r["surrogate_trace"], surrogate_answer=r["surrogate_answer"])
    if inversion_dir is not None:
        for r in read_split(inversion_dir, "unfiltered"):
            if r["id"] in rows:
                rows[r["id"]]["first_trace"] = r["first_trace"]
        for r in read_split(inversion_dir, "inverted"):
            if r["id"] in rows:
                rows[r["id"]]["inverted_trace"] = r["inverted_trace"]
    keep = ["id", "problem", "target_answer", "target_summary", "target_trace", "surrogate_trace",
            "surrogate_answer", "first_trace", "inverted_trace"]
    return [{k: r.get(k) for k in keep} for r in rows.values()]


def run_student_data(cfg: RunConfig, target_dir: Path, surrogate_dir: Optional[Path] = None,
                     inversion_dir: Optional[Path] = None, conditions: Optional[list[str]] = None,
                     stage: str = "student_data") -> dict:
    """Write ``<output.dir>/<stage>`` with one config per condition (see the module doc)."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from trace_inversion.steps.student_format import FormatStudentSFT

    import time

    t0 = time.time()
    conditions = conditions or DEFAULT_CONDITIONS
    rows = join_sources(Path(target_dir), surrogate_dir and Path(surrogate_dir), inversion_dir and Path(inversion_dir))
    out_dir = Path(cfg.output.dir) / stage
    fp = stage_fingerprint(cfg, "student-data", rows, conditions=conditions)
    done = reuse_finished(out_dir, fp)
    if done is not None:
        return report_stage(stage.replace("_", "-"), done, cfg, summary(done))
    with Pipeline(name=f"student-data-{cfg.name}", cache_dir=distilabel_cache(cfg)) as pipeline:
        load = LoadDataFromDicts(name="load_rows", data=rows, batch_size=512)
        for c in conditions:
            load >> FormatStudentSFT(name=f"format_{c}", condition=c, input_batch_size=512)
    distiset = run_distiset(pipeline, cfg, stage.replace("_", "-"))
    counts = {}
    for c in conditions:
        result = reorder(distiset[f"format_{c}"]["train"].to_list(), [r["id"] for r in rows])
        kept = [{"id": r["id"], "messages": r["messages"]} for r in result if r.get("messages")]
        counts[c] = len(kept)
        if kept:
            write_split(out_dir, c, kept)
    stats = {"rows": len(rows), "conditions": counts, "output_dir": str(out_dir), "seconds": round(time.time() - t0, 2)}
    write_json(stats, out_dir / "stats.json")
    from trace_inversion.hub_cards.card import write_stage_card

    write_stage_card(out_dir, "student-data", cfg, stats, counts)
    mark_finished(out_dir, fp, stats)
    return report_stage(stage.replace("_", "-"), stats, cfg, summary(stats))


def summary(stats: dict) -> str:
    """The stage's key counts for its console line."""
    return f"{stats['rows']:,} rows · " + ", ".join(f"{c} {n:,}" for c, n in stats["conditions"].items())
