"""A real local Argilla 2.x stack: redis, an OpenSearch-compatible search engine,
argilla-server and its RQ worker, each bound to 127.0.0.1 on a free port, each in its
own process group, stopped by pid.

Used by the review tests and by ``trace-inversion review serve`` for offline review.
The server runs from its own virtual environment (``scripts/setup_argilla_server.sh``
creates ``.venv-argilla-server``; override with ``ARGILLA_SERVER_VENV``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from trace_inversion.servers import ServerHandle, _wait_ready, free_port

DEFAULT_VENV = Path(__file__).resolve().parent.parent / ".venv-argilla-server"


def server_python() -> Path:
    venv = Path(os.environ.get("ARGILLA_SERVER_VENV", DEFAULT_VENV))
    py = venv / "bin" / "python"
    if not py.exists():
        raise RuntimeError(f"no argilla-server environment at {venv}; fix: bash scripts/setup_argilla_server.sh "
                           "(or set ARGILLA_SERVER_VENV)")
    return py


def osmem_binary(py: Path) -> str:
    out = subprocess.run([str(py), "-c", "import osmem_server; print(osmem_server.resolve_binary())"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class ArgillaStack:
    url: str
    api_key: str
    password: str
    home: Path
    parts: dict[str, ServerHandle] = field(default_factory=dict)

    def stop(self) -> None:
        for name in ("worker", "server", "search", "redis"):
            h = self.parts.pop(name, None)
            if h is not None:
                h.stop()

    def __enter__(self) -> "ArgillaStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def _http_ok(url: str, headers: dict | None = None) -> bool:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=2) as r:
        return 200 <= r.status < 300


def start_argilla_stack(workdir: str | os.PathLike, api_key: str | None = None, timeout: float = 120) -> ArgillaStack:
    """Start redis, osmem-server, argilla-server and its worker; returns when
    ``GET /api/v1/me`` answers with the owner's API key."""
    home = Path(workdir)
    home.mkdir(parents=True, exist_ok=True)
    py = server_python()
    redis = shutil.which("redis-server")
    if redis is None:
        raise RuntimeError("redis-server not found; fix: apt-get install redis-server "
                           "(scripts/setup_argilla_server.sh does it)")
    # A workdir keeps its database (review work survives restarts) and its owner's
    # credentials, in a 0600 file next to it (never in a dataset, card or log).
    cred_file = home / "credentials.json"
    if cred_file.exists() and (home / "argilla" / "argilla.db").exists():
        cred = json.loads(cred_file.read_text())
    else:
        cred = {"api_key": api_key or "ti-" + secrets.token_hex(16), "password": "ti-" + secrets.token_hex(8)}
        fd = os.open(cred_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cred, f)
    api_key, password = cred["api_key"], cred["password"]
    stack = ArgillaStack(url="", api_key=api_key, password=password, home=home)
    try:
        rport = free_port()
        log = home / "redis.log"
        p = _spawn([redis, "--bind", "127.0.0.1", "--port", str(rport), "--save", "", "--appendonly", "no",
                    "--dir", str(home)], log)
        stack.parts["redis"] = ServerHandle(p, rport, log)
        _wait_ready(p, lambda: _redis_ping(rport), 30, log)

        sport = free_port()
        log = home / "search.log"
        p = _spawn([osmem_binary(py), "-addr", f"127.0.0.1:{sport}", "-no-stdin-watch"], log)
        stack.parts["search"] = ServerHandle(p, sport, log)
        _wait_ready(p, lambda: _http_ok(f"http://127.0.0.1:{sport}/"), 30, log)

        aport = free_port()
        env = dict(os.environ, ARGILLA_HOME_PATH=str(home / "argilla"),
                   ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{home / 'argilla' / 'argilla.db'}",
                   ARGILLA_REDIS_URL=f"redis://127.0.0.1:{rport}/0", ARGILLA_SEARCH_ENGINE="opensearch",
                   ARGILLA_ELASTICSEARCH=f"http://127.0.0.1:{sport}", ARGILLA_ENABLE_TELEMETRY="0",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1")
        env.pop("VIRTUAL_ENV", None)
        (home / "argilla").mkdir(exist_ok=True)
        fresh = not (home / "argilla" / "argilla.db").exists()
        cmds = [["database", "migrate"]]
        if fresh:
            cmds.append(["database", "users", "create_default", "--api-key", api_key, "--password", password])
        for cmd in cmds:
            r = subprocess.run([str(py), "-m", "argilla_server", *cmd], env=env, capture_output=True, text=True,
                               timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"argilla_server {' '.join(cmd[:2])} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        log = home / "argilla-server.log"
        p = _spawn([str(py), "-m", "argilla_server", "start", "--host", "127.0.0.1", "--port", str(aport)], log, env)
        stack.parts["server"] = ServerHandle(p, aport, log)
        log = home / "argilla-worker.log"
        w = _spawn([str(py), "-m", "argilla_server", "worker"], log, env)
        stack.parts["worker"] = ServerHandle(w, 0, log)
        stack.url = f"http://127.0.0.1:{aport}"
        _wait_ready(p, lambda: _http_ok(stack.url + "/api/v1/me", {"X-Argilla-Api-Key": api_key}), timeout,
                    home / "argilla-server.log")
        return stack
    except BaseException:
        stack.stop()
        raise


def _redis_ping(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def main(argv: list[str] | None = None) -> int:
    """``python -m trace_inversion.argilla_stack DIR``: run a stack until Ctrl-C."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("workdir")
    args = ap.parse_args(argv)
    with start_argilla_stack(args.workdir) as st:
        print(f"ARGILLA_API_URL={st.url}\nARGILLA_API_KEY={st.api_key}\nusername=argilla password={st.password}",
              flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
