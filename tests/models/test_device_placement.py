"""GPU placement: two local roles of one pipeline each get their own device.

build-inverter-data runs the surrogate and the compressor as two local engines in two
step processes. distilabel's placement (``CudaDevicePlacementMixin``, made safe without
NVML by ``models.placement``) gives each its own device and sets CUDA_VISIBLE_DEVICES
in its process before the engine starts; each step records what its process saw. On a
machine without GPUs the management library is replaced by a stand-in reporting two
devices (the placement logic is distilabel's own; only the device count is faked);
``scripts/gpu_check.sh`` runs the same check on a real GPU machine."""

import json
import os
import subprocess
import sys

import pytest

FAKE_NVML = '''
def nvmlInit():
    pass

def nvmlShutdown():
    pass

def nvmlDeviceGetCount():
    return 2
'''

SCRIPT = r'''
import json, sys
from trace_inversion.config import load_config
from trace_inversion.data.loading import load_rows
from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data
from trace_inversion.pipelines.query_target import run_query_target

out, model = sys.argv[1], sys.argv[2]
base = {"data": {"toy": {"n_train": 6, "n_test": 0}}, "output": {"dir": out}}
cfg = load_config(None, base)
rows = load_rows(cfg.data)
run_query_target(cfg, rows)
local = {"backend": "transformers", "model": model, "sampling": {"max_new_tokens": 8}}
cfg = load_config(None, {**base, "inverter_data": {"target_release": out + "/target_query"},
                         "models": {"surrogate": local, "compressor": local}})
print(json.dumps(run_build_inverter_data(cfg, rows)["rows_in"]))
'''


@pytest.mark.slow
def test_two_local_roles_get_their_own_devices(tiny_lm_dir, tmp_path):
    fake = tmp_path / "fake_nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_NVML)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]),
               TMPDIR=str(tmp_path))  # distilabel's device map lives in the temp dir
    r = subprocess.run([sys.executable, str(script), str(out), str(tiny_lm_dir)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    timings = next(p for p in out.rglob("timings") if p.is_dir())
    seen = {name: json.loads((timings / f"{name}.json").read_text()) for name in ("surrogate", "compress")}
    devices = {name: t["cuda_visible_devices"] for name, t in seen.items()}
    assert sorted(devices.values()) == ["0", "1"], devices  # one device each, never the same one
    # each engine loaded in its own step process, under the devices it was given (the tiny
    # surrogate writes no <think> trace, so the compressor may have nothing to summarise)
    assert all(t["backend"] == "transformers" and t["engine_load_seconds"] > 0 for t in seen.values()), seen
    assert seen["surrogate"]["requests"] == 6
