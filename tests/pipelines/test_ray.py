"""Every pipeline runs unchanged on distilabel's Ray pipeline, on a local Ray cluster
started by the test (CPU), producing output identical to the local run."""

import os
import subprocess
import sys

import polars as pl
import pytest
import yaml

from trace_inversion.data.io import split_path

pytestmark = pytest.mark.slow

STAGES = {"target_query": ["target", "failures"], "inverter_data": ["with_summary", "without_summary", "traces"],
          "inversion": ["inverted", "rejected", "unfiltered"], "student_data": ["answer_only", "inverted_verified"]}


def _run_all(tmp_path, name, env, ray: bool):
    cfg = {"name": "ray-eq", "data": {"source": "toy", "toy": {"n_train": 60, "n_test": 0}},
           "models": {"target": {"backend": "toy", "model": "toy-target"},
                      "surrogate": {"backend": "toy", "model": "toy-surrogate"},
                      "compressor": {"backend": "toy", "model": "toy-compressor"},
                      "inverter": {"backend": "toy", "model": "toy-inverter"}},
           "invert": {"max_attempts": 3}, "output": {"dir": str(tmp_path / name)}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    flag = ["--ray"] if ray else []
    out = tmp_path / name
    for args in (["query-target"], ["build-inverter-data"], ["invert"],
                 ["student-data", "--target", str(out / "target_query"), "--inversion", str(out / "inversion")]):
        r = subprocess.run([sys.executable, "-m", "trace_inversion.cli", *args, "--config", str(path), *flag],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, (args, r.stderr[-3000:])
    return out


def test_pipelines_on_ray_match_the_local_run(ray_cluster, tmp_path):
    env = dict(os.environ, RAY_ADDRESS=ray_cluster)
    local = _run_all(tmp_path, "local", env, ray=False)
    on_ray = _run_all(tmp_path, "ray", env, ray=True)
    for stage, configs in STAGES.items():
        for c in configs:
            a = pl.read_parquet(split_path(local / stage, c))
            b = pl.read_parquet(split_path(on_ray / stage, c))
            assert a.columns == b.columns and a.sort("id").equals(b.sort("id")), (stage, c)
            assert split_path(local / stage, c).name == split_path(on_ray / stage, c).name  # byte-identical shards
    assert a.height > 0
    # the runs really went through the cluster
    log = (on_ray / ".distilabel").rglob("pipeline.log")
    assert any("ray" in p.read_text().lower() for p in log)
