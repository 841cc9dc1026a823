"""``--retry-failed``: fresh requests for exactly the rows that failed on content;
successes are replayed, never paid again; a plain rerun keeps what the retry fixed."""

import json
import subprocess
import sys

import pytest
import yaml

from trace_inversion.data.io import read_split


def run(cfg_path, *extra):
    r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", "query-target", "--config", str(cfg_path), *extra],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout[r.stdout.index("{"):])


@pytest.mark.slow
def test_retry_failed_re_requests_exactly_the_failed_rows(toy_server, tmp_path):
    srv = toy_server(p_refusal=0.3, seed=7)
    out = tmp_path / "run"
    cfg = {"name": "retry", "data": {"source": "toy", "toy": {"n_train": 60, "n_test": 0}},
           "models": {"target": {"backend": "openai-responses", "model": "toy-target", "base_url": srv.base_url,
                                 "reasoning_effort": "low", "reasoning_summary": "auto"}},
           "output": {"dir": str(out)}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = run(path)
    failed = {r["id"] for r in read_split(out / "target_query", "failures")}
    assert first["failures"] == len(failed) > 5
    assert all(reason.startswith("refusal") for reason in first["failure_reasons"])
    assert srv.get("/stats")["total"] == 60

    srv.post("/reset")
    plain = run(path)  # content failures replay from the cache: nothing is sent
    assert srv.get("/stats")["total"] == 0 and plain["failures"] == len(failed)

    retried = run(path, "--retry-failed")
    st = srv.get("/stats")
    assert st["total"] == len(failed)  # exactly one fresh request per failed row, none for the successes
    problems = {r["id"]: r["problem"] for r in read_split(out / "target_query", "target")}
    still = {r["id"] for r in read_split(out / "target_query", "failures")}
    assert still < failed  # every row that succeeded before is still there, untouched
    assert len(problems) + len(still) == 60 and not set(problems) & still
    assert retried["retried_requests"] == len(failed)
    assert retried["retried_recovered"] == len(failed) - len(still) > 0

    srv.post("/reset")
    again = run(path)  # a plain rerun replays the newest retry: the fixed rows stay fixed
    assert srv.get("/stats")["total"] == 0 and again["failures"] == len(still)
