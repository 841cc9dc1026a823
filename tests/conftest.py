"""Shared fixtures: offline environment, tiny models, local servers (stopped by pid)."""

import os
import tempfile
from pathlib import Path

import pytest

# Offline everywhere: nothing may come from the Hub, in tests or in CI.
_TMP = Path(tempfile.mkdtemp(prefix="ti-tests-"))
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HOME": str(_TMP / "hf_home"),
    "DISTILABEL_CACHE_DIR": str(_TMP / "distilabel"),
})
# Tiny models are content-addressed, so reusing them across sessions is safe.
MODEL_CACHE = Path(os.environ.get("TI_TEST_MODEL_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "tiny-models"))


@pytest.fixture(scope="session")
def tiny_lm_dir() -> Path:
    """A tiny Llama (head_dim 32) with a locally trained BPE tokenizer, built once.

    Built in a subprocess: the test process must not run torch itself, because
    distilabel forks its step workers and a worker running torch after its parent
    used torch's OpenMP pool can deadlock."""
    import subprocess
    import sys

    code = ("import sys; from trace_inversion.toy.tiny_models import cached_tiny_lm; "
            f"print(cached_tiny_lm({str(MODEL_CACHE)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def toy_server(tmp_path):
    """Factory: ``toy_server(latency=0.01, p429=0.1, ...)`` -> running ServerHandle."""
    from trace_inversion.local_services.servers import start_toy_server

    handles = []

    def start(**faults):
        h = start_toy_server(tmp_path / "logs", **faults)
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop()


@pytest.fixture(scope="session")
def vllm_server(tiny_lm_dir, tmp_path_factory):
    """A real vLLM CPU OpenAI-compatible server on the tiny model (one per session)."""
    from trace_inversion.local_services.servers import start_vllm_server

    h = start_vllm_server(tiny_lm_dir, tmp_path_factory.mktemp("vllm"), served_name="tiny")
    yield h
    h.stop()


HUB_TEST_TOKEN = "hf_contract_" + "ab12" * 6  # a test value the local Hub server accepts


@pytest.fixture
def hub_server(tmp_path):
    """The local Hub contract server (in memory), stopped by pid."""
    from trace_inversion.local_services.servers import start_hub_server

    h = start_hub_server(tmp_path / "logs", token=HUB_TEST_TOKEN)
    yield h
    h.stop()


@pytest.fixture(scope="session")
def argilla_stack(tmp_path_factory):
    """A real Argilla 2.x stack: redis + osmem search + argilla-server + worker."""
    from trace_inversion.local_services.argilla_stack import start_argilla_stack

    st = start_argilla_stack(tmp_path_factory.mktemp("argilla"))
    yield st
    st.stop()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster (`ray start --head --block`, CPU only) in its own process
    group, stopped by pid; yields its address for RAY_ADDRESS."""
    import signal
    import subprocess
    import sys
    import time

    from trace_inversion.local_services.servers import free_port

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    ray_bin = Path(sys.executable).with_name("ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")  # a local test cluster; Ray 2.60 may default to tokens
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={tmp}", "--node-ip-address=127.0.0.1"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    address = f"127.0.0.1:{port}"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    deadline = time.time() + 120
    while time.time() < deadline:
        r = subprocess.run([str(ray_bin), "status", f"--address={address}"], capture_output=True, text=True, env=env)
        if r.returncode == 0:
            break
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(1)
    else:
        raise TimeoutError(log.read_text()[-3000:])
    yield address
    import psutil

    # Ray's daemons (gcs_server, raylet, agents, workers) are not all in the group:
    # stop the group, then every process whose command line names this cluster's dir.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in psutil.process_iter(["cmdline"]):
        try:
            if tmp in " ".join(p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            pass
