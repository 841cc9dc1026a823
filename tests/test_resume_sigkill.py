"""Crash-resume for real: SIGKILL a query-target run mid-way, run it again.

The local server counts every request it receives (per request-body hash). Requests
finished before the kill are never sent again; only the ones in flight at the kill
moment (the server reports them) may be sent a second time, since nobody can know
whether an unanswered request was paid. A third run sends nothing at all.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from trace_inversion.data.io import split_path
import yaml

N = 240
CONCURRENCY = 4


def cache_entries(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(str(path), timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def run_cli(cfg_path: Path, wait=True):
    cmd = [sys.executable, "-m", "trace_inversion.cli", "query-target", "--config", str(cfg_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [0.25, 0.6])
def test_sigkill_then_rerun_pays_each_request_once(toy_server, tmp_path, kill_at):
    srv = toy_server(latency=0.08)
    cache = tmp_path / "requests.sqlite"
    cfg = {
        "name": "sigkill",
        "data": {"source": "toy", "toy": {"n_train": N, "n_test": 0}},
        "models": {"target": {"backend": "openai-responses", "model": "toy-target", "base_url": srv.base_url,
                              "reasoning_effort": "medium", "reasoning_summary": "auto",
                              "concurrency": CONCURRENCY}},
        "output": {"dir": str(tmp_path / "out")},
        "cache_path": str(cache),
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    proc = run_cli(cfg_path, wait=False)
    deadline = time.time() + 120
    while cache_entries(cache) < int(N * kill_at):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "run made no progress"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    at_kill = srv.stats()
    proc.wait(10)
    done_before = cache_entries(cache)
    assert 0 < done_before < N
    assert not list((tmp_path / "out" / "target_query").glob("data/target/*.parquet"))
    time.sleep(0.3)  # let the server finish the handlers of the dead client's requests

    run_cli(cfg_path)  # the same command again
    stats = srv.stats()
    counts = stats["counts"]
    in_flight = set(at_kill["in_flight_keys"])
    assert len(counts) == N  # every distinct request reached the server
    repeated = {k: c for k, c in counts.items() if c > 1}
    assert set(repeated) <= in_flight, f"finished requests were sent again: {set(repeated) - in_flight}"
    assert all(c == 2 for c in repeated.values())
    assert len(repeated) <= CONCURRENCY
    assert stats["total"] == N + len(repeated)

    out = pl.read_parquet(split_path(tmp_path / "out" / "target_query", "target"))
    assert out.height == N and out["id"].n_unique() == N  # no row lost, none duplicated
    assert out["target_answer"].null_count() == 0
    assert out["query_error"].null_count() == N

    total_before = stats["total"]
    run_cli(cfg_path)  # a finished run replays entirely from the cache
    assert srv.stats()["total"] == total_before
    out2 = pl.read_parquet(split_path(tmp_path / "out" / "target_query", "target"))
    assert out2.equals(out)  # a replayed run writes identical data
    assert "query_attempts" not in out.columns  # per-run facts live in stats.json
