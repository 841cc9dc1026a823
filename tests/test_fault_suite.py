"""The fault suite: 20 runs of query-target -> invert (real CLI processes, the target
behind the local Responses-API server) each SIGKILLed at a random moment and run again.

Across all runs: 0 rows lost, 0 duplicated (in the target output and in the inversion
output), and at most 2% of model calls repeated (only requests in flight at a kill can
be repeated: nobody can know whether an unanswered request was paid).
"""

import os
import random
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import yaml

from trace_inversion.data.io import split_path

pytestmark = pytest.mark.slow

TRIALS = 20
N = 200


def test_twenty_random_sigkills_lose_nothing(toy_server, tmp_path):
    srv = toy_server(latency=0.03, p429=0.05, retry_after=0.02, seed=11)
    rng = random.Random(2026)
    totals = {"paid": 0, "repeated": 0, "killed_mid_run": 0}
    for k in range(TRIALS):
        out = tmp_path / f"run{k}"
        cfg = {"name": f"fault{k}", "data": {"source": "toy", "toy": {"n_train": N, "n_test": 0, "seed": k}},
               "models": {"target": {"backend": "openai-responses", "model": "toy-target", "base_url": srv.base_url,
                                     "concurrency": 8, "reasoning_effort": "low", "reasoning_summary": "auto",
                                     "max_retries": 8},
                          "inverter": {"backend": "toy", "model": "toy-inverter"}},
               "invert": {"max_attempts": 2}, "output": {"dir": str(out)}}
        path = tmp_path / f"cfg{k}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        py = sys.executable
        chain = (f"{py} -m trace_inversion.cli query-target --config {path} && "
                 f"{py} -m trace_inversion.cli invert --config {path}")
        srv.post("/reset")
        proc = subprocess.Popen(["sh", "-c", chain], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(0.3, 9.0))  # anywhere: start-up, querying, writing, inverting, or after the end
        if proc.poll() is None:
            totals["killed_mid_run"] += 1
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        r = subprocess.run(["sh", "-c", chain], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (k, r.stderr[-2000:])
        tq = out / "target_query"
        ok = pl.read_parquet(split_path(tq, "target"))
        failed = pl.read_parquet(split_path(tq, "failures"))
        ids = ok["id"].to_list() + failed["id"].to_list()
        assert len(ids) == N and len(set(ids)) == N, k  # none lost, none duplicated
        inv = out / "inversion"
        inv_ids = [i for config in ("inverted", "unverifiable", "rejected")
                   for i in pl.read_parquet(split_path(inv, config))["id"].to_list()]
        assert sorted(inv_ids) == sorted(ok["id"].to_list()), k
        paid = srv.stats()["paid"]
        totals["paid"] += sum(paid.values())
        totals["repeated"] += sum(v - 1 for v in paid.values() if v > 1)
    print(totals)
    assert totals["killed_mid_run"] >= 10  # most kills landed while work was going on
    assert totals["repeated"] <= 0.02 * totals["paid"], totals
