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

    code = ("import sys; from trace_inversion.tiny_models import cached_tiny_lm; "
            f"print(cached_tiny_lm({str(MODEL_CACHE)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def toy_server(tmp_path):
    """Factory: ``toy_server(latency=0.01, p429=0.1, ...)`` -> running ServerHandle."""
    from trace_inversion.servers import start_toy_server

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
    from trace_inversion.servers import start_vllm_server

    h = start_vllm_server(tiny_lm_dir, tmp_path_factory.mktemp("vllm"), served_name="tiny")
    yield h
    h.stop()


HUB_TEST_TOKEN = "hf_contract_" + "ab12" * 6  # a test value the local Hub server accepts


@pytest.fixture
def hub_server(tmp_path):
    """The local Hub contract server (in memory), stopped by pid."""
    from trace_inversion.servers import start_hub_server

    h = start_hub_server(tmp_path / "logs", token=HUB_TEST_TOKEN)
    yield h
    h.stop()


@pytest.fixture(scope="session")
def argilla_stack(tmp_path_factory):
    """A real Argilla 2.x stack: redis + osmem search + argilla-server + worker."""
    from trace_inversion.argilla_stack import start_argilla_stack

    st = start_argilla_stack(tmp_path_factory.mktemp("argilla"))
    yield st
    st.stop()
