"""The console: one readable line per stage, library logs in a file."""

import json
import subprocess
import sys

from trace_inversion.console import render_live, stage_line, write_progress


def test_live_and_final_lines(tmp_path):
    line = render_live("invert", [{"label": "invert", "done": 1200, "total": 3000, "failed": 2, "cost": 0.5}], 75)
    assert "[████████" in line and "1,200/3,000" in line and "2 failed" in line and "$0.5000" in line
    assert line.endswith("1m15s")
    assert render_live("query-target", [], 0.4).strip().startswith("query-target           starting")
    done = stage_line("query-target", "3 of 3 rows answered", 2.5, tmp_path / "logs" / "query-target.log")
    assert done.startswith("✓ query-target") and "2.5s" in done and "query-target.log" in done
    assert "reused" in stage_line("invert", "x", 0, reused=True)
    write_progress(str(tmp_path / "p"), "query_target", "query target", 5, 10, 1, 0.0)
    assert json.loads((tmp_path / "p" / "query_target.json").read_text())["done"] == 5


def test_a_pipeline_prints_one_line_and_logs_to_a_file(tmp_path):
    """A real query-target run: its console is one stage line (no distilabel INFO records,
    no progress bars) and the library log is in <output>/logs/."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "query-target", "-o", str(out),
                        "--set", "data.toy.n_train=20"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("✓ query-target") and "20 of 20 rows answered" in lines[0], lines
    log = (out / "logs" / "query-target.log").read_text()
    assert "distilabel" in log and "INFO" in log
    v = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "--verbose", "query-target", "-o",
                        str(tmp_path / "v"), "--set", "data.toy.n_train=20"], capture_output=True, text=True,
                       timeout=300)
    assert v.returncode == 0 and "INFO" in v.stdout + v.stderr  # --verbose restores the libraries' output
