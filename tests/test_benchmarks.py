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
