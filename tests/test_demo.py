"""The demo's whole pipeline at a small size: exact data flow through every stage.

The full-size demo (calibrated so the claim's ordering is robust) is recorded in
benchmarks/demo_results.md; at this size students barely train, so only the data flow,
the artefacts and the resumability are asserted.
"""

import json

import polars as pl
import pytest

from trace_inversion.io import read_split, split_path

SMALL = {"n_train": 160, "n_test": 40, "n_ops": 4, "inverter_steps": 40, "student_steps": 40, "max_new_tokens": 40}


@pytest.mark.slow
def test_demo_small_end_to_end_and_resume(tmp_path):
    from trace_inversion.hub_cards.publish import list_tags
    from trace_inversion.pipelines.demo import CONDITIONS

    import subprocess
    import sys

    out = tmp_path / "demo"

    def run_demo_cli() -> str:
        # In a subprocess: the demo evaluates with torch in its own process, and this test
        # process must stay torch-free (distilabel forks workers; see conftest.tiny_lm_dir).
        args = [sys.executable, "-m", "trace_inversion.cli", "demo", "-o", str(out), "--inverter-backend", "transformers"]
        for k, v in SMALL.items():
            args += ["--size", f"{k}={v}"]
        r = subprocess.run(args, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    report = run_demo_cli()
    stats = json.loads((out / "stats.json").read_text())
    run = stats["runs"][0]
    assert set(run["accuracy"]) == set(CONDITIONS)
    assert all(0.0 <= a <= 1.0 for a in run["accuracy"].values())
    seed = out / "seed0"
    # every stage wrote its dataset folder, card and stats
    for stage in ("target_query", "inverter_data", "surrogate_on_targets", "inversion", "student_data"):
        assert (seed / stage / "README.md").exists() and (seed / stage / "stats.json").exists()
    assert len(read_split(seed / "target_query", "target")) == 160
    inv = run["inversion"]
    assert inv["kept"] + inv["rejected"] == 160
    counts = run["rows"]
    assert counts["answer_only"] == counts["target_traces"] == 160 and counts["inverted_verified"] == inv["kept"]
    # students trained with the tiny recipe; local releases tagged
    for c in CONDITIONS:
        assert (seed / "models" / f"student-{c}" / "config.json").exists()
    for stage in ("target_query", "inversion"):
        assert list_tags(out / "releases" / f"{stage}-seed0") == ["v1"]
    assert (out / "results.png").stat().st_size > 10_000
    assert "| inverted (verified) |" in report and (out / "report.md").exists()

    # Resume: the same command again replays every model call and reuses every training.
    import sqlite3

    with sqlite3.connect(str(seed / "requests.sqlite")) as c:
        before = c.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    run_demo_cli()
    with sqlite3.connect(str(seed / "requests.sqlite")) as c:
        assert c.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == before
    stats2 = json.loads((out / "stats.json").read_text())
    assert stats2["runs"][0]["accuracy"] == run["accuracy"]
    assert list_tags(out / "releases" / "inversion-seed0") == ["v1"]  # an unchanged release is not re-tagged
