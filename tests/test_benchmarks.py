"""Benchmarks keep running: each prints its JSON at a small size (figures are not asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_target_query_benchmark_runs():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "target_query.py"), "--rows", "128",
                        "--concurrency", "16", "--latency", "0.05"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["rows"] == 128 and out["client_429_attempts_per_row"] > 1.0
    assert {"ratio_vs_ideal", "ratio_429_vs_ideal", "ratio_vs_raw", "machine"} <= set(out)


def test_the_demo_record_writes_its_time_table_and_keeps_the_hand_written_history(tmp_path):
    """``benchmarks/demo.py --from-run``: the results file gets the report, the seconds per
    job from stats.json and the JSON figures, and keeps its "## Earlier records" section."""
    run, results = tmp_path / "run", tmp_path / "results"
    run.mkdir()
    results.mkdir()
    timings = {"inverter_data": 10.0, "train_inverter": 200.0, "invert_steps": 50.0, "invert": 15.0,
               "student_data": 5.0, "train_answer_only": 30.0, "train_target_traces": 60.0, "eval_answer_only": 1.0}
    stats = {"runs": [{"seed": 0, "seconds": 480.0, "timings": timings, "reused": [],
                       "accuracy": {"target_traces": 0.97, "answer_only": 0.2}}],
             "accuracy": {}, "claims": [], "fork_server": {"forked": 5, "plain": []}}
    (run / "stats.json").write_text(json.dumps(stats))
    (run / "report.md").write_text("# report\n\n## The paper's claims, as they fell\n\nclaims\n\nWrote report.md")
    (run / "results.png").write_bytes(b"png")
    (results / "demo_results.md").write_text("# old report\n\n## Earlier records\n\nstop 1: 600 s a seed.\n")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo.py"), "--from-run", str(run),
                        "--results-dir", str(results)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["per_seed"][0]["minutes_le_10"] is True and out["demo_targets_met"] is True
    text = (results / "demo_results.md").read_text()
    assert text.startswith("# report") and "# old report" not in text
    assert "| 0 | 10.0 | 200.0 | 50.0 | 15.0 | 5.0 | 2 students, 200 s | 480 s |" in text  # 480 - 280
    assert "pre-imported process: 5; started as plain processes: 0" in text
    assert text.index("## Figures (JSON)") < text.index("## Earlier records")
    assert text.rstrip().endswith("stop 1: 600 s a seed.") and (results / "demo_results.png").read_bytes() == b"png"
