"""A real local Argilla 2.x stack: redis, an OpenSearch-compatible search engine,
argilla-server and its RQ worker, each bound to 127.0.0.1 on a free port, each in its
own process group, stopped by pid.

Used by the review tests and by ``trace-inversion review serve`` for offline review.
The server runs from its own virtual environment (``scripts/setup_argilla_server.sh``
creates ``.venv-argilla-server``; override with ``ARGILLA_SERVER_VENV``).

The search engine is ``osmem-server`` (in-memory, no scripted updates): every
``argilla_server`` command runs through ``argilla_osmem_compat.py``, which performs
argilla's scripted index updates as read-modify-write (see its docstring), so the
web UI's single-response submit / draft / discard / delete and suggestion deletes
work. The index is rebuilt from the database when a folder is served again.

A folder is served by one stack at a time: ``start_argilla_stack`` holds an
exclusive lock on ``DIR/stack.lock`` while it runs (a second start on the folder
raises :class:`StackBusy`, naming the running one), and records every process it
started in ``DIR/stack.json``; processes left there by a stack whose owner was
killed with SIGKILL are stopped (matched by pid *and* start time) before a new one
starts. ``review serve`` stops everything it started on SIGINT, SIGTERM and SIGHUP,
also when it runs in the background (where the shell ignores SIGINT for it).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trace_inversion.local_services.servers import ServerHandle, _wait_ready, free_port

DEFAULT_VENV = Path(__file__).resolve().parents[2] / ".venv-argilla-server"
COMPAT = Path(__file__).resolve().with_name("argilla_osmem_compat.py")


class StackBusy(RuntimeError):
    """The folder is already served by a running stack."""


def server_python() -> Path:
    venv = Path(os.environ.get("ARGILLA_SERVER_VENV", DEFAULT_VENV))
    py = venv / "bin" / "python"
    if not py.exists():
        raise RuntimeError(f"no argilla-server environment at {venv}; fix: bash scripts/setup_argilla_server.sh "
                           "(or set ARGILLA_SERVER_VENV)")
    return py


def argilla_server_cmd(py: Path, *args: str) -> list[str]:
    """``python -m argilla_server ARGS`` with the osmem compatibility patch loaded first."""
    return [str(py), "-I", str(COMPAT), *args]


def osmem_binary(py: Path) -> str:
    out = subprocess.run([str(py), "-c", "import osmem_server; print(osmem_server.resolve_binary())"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _start_time(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (None when it is gone): with the pid, it
    names one process, never a later one that reuses the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass
class ArgillaStack:
    url: str
    api_key: str
    password: str
    home: Path
    parts: dict[str, ServerHandle] = field(default_factory=dict)
    _lock_fd: Optional[int] = None

    def pids(self) -> dict[str, int]:
        return {name: h.proc.pid for name, h in self.parts.items()}

    def stop(self) -> None:
        for name in ("worker", "server", "search", "redis"):
            h = self.parts.pop(name, None)
            if h is not None:
                h.stop()
        if self._lock_fd is not None:
            (self.home / "stack.json").unlink(missing_ok=True)
            os.close(self._lock_fd)  # releases the folder's lock
            self._lock_fd = None

    def _record(self) -> None:
        state = {"owner_pid": os.getpid(), "url": self.url,
                 "parts": {name: [h.proc.pid, _start_time(h.proc.pid)] for name, h in self.parts.items()}}
        tmp = self.home / "stack.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.home / "stack.json")

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


def _lock_folder(home: Path) -> int:
    fd = os.open(home / "stack.lock", os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            state = json.loads((home / "stack.json").read_text())
        except (OSError, ValueError):
            state = {}
        owner, url = state.get("owner_pid", "?"), state.get("url") or "(still starting)"
        raise StackBusy(f"{home} is already served by a running Argilla stack (pid {owner}) at {url}; "
                        f"use it (ARGILLA_API_URL={url}, the key is in {home / 'credentials.json'}) "
                        f"or stop it first: kill {owner}") from None
    return fd


def _stop_leftovers(home: Path) -> list[int]:
    """Stop the processes a previous stack on ``home`` recorded and left running (its
    owner died without stopping them); returns their pids."""
    try:
        state = json.loads((home / "stack.json").read_text())
    except (OSError, ValueError):
        return []
    stopped = []
    for pid, started in state.get("parts", {}).values():
        if started is None or _start_time(pid) != started:
            continue  # gone, or the pid now names another process
        try:
            import psutil

            tree = psutil.Process(pid).children(recursive=True)
        except Exception:
            tree = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)  # each part leads its own process group
            except ProcessLookupError:
                break
            deadline = time.time() + 10
            while time.time() < deadline and _start_time(pid) == started:
                time.sleep(0.1)
            if _start_time(pid) != started:
                break
        for child in tree:
            try:
                child.kill()
            except Exception:
                pass
        stopped.append(pid)
    (home / "stack.json").unlink(missing_ok=True)
    return stopped


def start_argilla_stack(workdir: str | os.PathLike, api_key: str | None = None, timeout: float = 120) -> ArgillaStack:
    """Start redis, osmem-server, argilla-server and its worker; returns when
    ``GET /api/v1/me`` answers with the owner's API key. Raises :class:`StackBusy`
    when another stack serves ``workdir``."""
    home = Path(workdir).resolve()
    home.mkdir(parents=True, exist_ok=True)
    py = server_python()
    redis = shutil.which("redis-server")
    if redis is None:
        raise RuntimeError("redis-server not found; fix: apt-get install redis-server "
                           "(scripts/setup_argilla_server.sh does it)")
    lock_fd = _lock_folder(home)
    try:
        leftovers = _stop_leftovers(home)
    except BaseException:
        os.close(lock_fd)
        raise
    if leftovers:
        print(f"stopped {len(leftovers)} processes (pids {leftovers}) left running by an earlier stack on {home}",
              file=sys.stderr)
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
    stack = ArgillaStack(url="", api_key=api_key, password=password, home=home, _lock_fd=lock_fd)
    try:
        rport = free_port()
        log = home / "redis.log"
        p = _spawn([redis, "--bind", "127.0.0.1", "--port", str(rport), "--save", "", "--appendonly", "no",
                    "--dir", str(home)], log)
        stack.parts["redis"] = ServerHandle(p, rport, log)
        stack._record()
        _wait_ready(p, lambda: _redis_ping(rport), 30, log)

        sport = free_port()
        log = home / "search.log"
        p = _spawn([osmem_binary(py), "-addr", f"127.0.0.1:{sport}", "-no-stdin-watch"], log)
        stack.parts["search"] = ServerHandle(p, sport, log)
        stack._record()
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
        else:  # the search engine is in memory: rebuild its indices from the database
            cmds.append(["search-engine", "reindex"])
        for cmd in cmds:
            r = subprocess.run(argilla_server_cmd(py, *cmd), env=env, capture_output=True, text=True, timeout=300,
                               start_new_session=True)
            if r.returncode != 0:
                raise RuntimeError(f"argilla_server {' '.join(cmd[:2])} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        log = home / "argilla-server.log"
        p = _spawn(argilla_server_cmd(py, "start", "--host", "127.0.0.1", "--port", str(aport)), log, env)
        stack.parts["server"] = ServerHandle(p, aport, log)
        stack._record()
        log = home / "argilla-worker.log"
        w = _spawn(argilla_server_cmd(py, "worker"), log, env)
        stack.parts["worker"] = ServerHandle(w, 0, log)
        stack.url = f"http://127.0.0.1:{aport}"
        stack._record()
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


class _Stop(BaseException):
    """Raised by the signal handlers of ``main``: unwinds into ``stack.stop()``."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main(argv: list[str] | None = None) -> int:
    """``python -m trace_inversion.local_services.argilla_stack DIR`` (``trace-inversion review serve
    DIR``): run a stack until SIGINT (Ctrl-C), SIGTERM or SIGHUP, then stop every
    process it started. Exit 0 after a clean stop, 2 if DIR is served already."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("workdir")
    args = ap.parse_args(argv)

    def on_signal(signum, frame):
        for s in STOP_SIGNALS:  # stopping must not be interrupted by a second signal
            signal.signal(s, signal.SIG_IGN)
        raise _Stop(signum)

    # set explicitly: a shell starts background jobs with SIGINT ignored
    for s in STOP_SIGNALS:
        signal.signal(s, on_signal)
    try:
        with start_argilla_stack(args.workdir) as st:
            print(f"ARGILLA_API_URL={st.url}\nARGILLA_API_KEY={st.api_key}\nusername=argilla password={st.password}\n"
                  f"serving {st.home} (pid {os.getpid()}); stop with Ctrl-C or kill {os.getpid()}", flush=True)
            while True:
                time.sleep(3600)
    except StackBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as e:  # a part failed to start: everything started is stopped
        print(f"error: the Argilla stack did not start: {e}", file=sys.stderr)
        return 1
    except _Stop as e:
        print(f"stopped on {signal.Signals(e.args[0]).name}: every process of the stack ended", file=sys.stderr,
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
