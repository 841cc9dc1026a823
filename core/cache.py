"""The request cache: every model call in the project goes through it.

A request is keyed by a SHA-256 of its canonical JSON: backend, model, the prompt or
messages, the sampling parameters and the sample count (never the API key or the
server URL: the same request to the same model is the same request). Each finished
response is committed in its own SQLite transaction (WAL journal), so a crash or
SIGKILL at any moment loses at most the requests that were in flight; running the
same command again replays every finished request from the cache and pays for none.

distilabel's own resume hangs (upstream #1065); this cache is the project's resume
mechanism, and also what makes offline tests replay rather than mock model calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from .secrets import scrub

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_key(backend: str, model: str, payload: dict) -> str:
    """Hash of (backend, model, payload). ``payload`` holds the prompt or messages,
    the sampling parameters (None values dropped) and the sample count."""
    clean = {k: v for k, v in payload.items() if v is not None}
    if isinstance(clean.get("params"), dict):
        clean["params"] = {k: v for k, v in clean["params"].items() if v is not None}
    body = canonical_json({"backend": backend, "model": model, "payload": clean})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def model_signature(model: str) -> Optional[list]:
    """For a local model folder, its files' names, sizes and mtimes (retraining into the
    same folder changes them); None for a model id. Part of request keys and stage
    fingerprints, so a retrained model never replays the old model's outputs."""
    d = Path(model)
    if not d.is_dir():
        return None
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in d.iterdir() if f.is_file())


def _enable_wal(conn: sqlite3.Connection, seconds: float = 60.0) -> None:
    """Switch to WAL (persistent: a no-op once any connection has done it). Changing the
    journal mode can fail at once with "database is locked" when several processes open
    a new cache together (distilabel loads its steps in parallel), without waiting on
    the busy timeout, so it is retried."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class RequestCache:
    """Durable, process- and thread-safe map from request hash to response.

    Attributes:
        path: SQLite file (created with its parent folder).
        hits / misses: counters for this instance (a finished rerun has misses == 0).
    """

    def __init__(self, path: str | os.PathLike, durability: str = "normal", secret_env: tuple = ()):
        self.path = Path(path)
        # environment variables whose values are redacted from what is stored (besides the well-known ones)
        self.secret_env = tuple(n for n in secret_env if n)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # NORMAL in WAL mode survives a killed process (the threat model: crashes,
        # Ctrl-C, SIGKILL); FULL also survives power loss at an fsync per request.
        self._sync = {"normal": "NORMAL", "full": "FULL"}[durability]
        self._local = threading.local()
        self._pid = os.getpid()
        self.hits = 0
        self.misses = 0
        self._conn()  # create the schema eagerly so a bad path fails before any call

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread and per process (a forked child must not reuse
        # its parent's connection).
        conn = getattr(self._local, "conn", None)
        if conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=60000")
            _enable_wal(conn)
            conn.execute(f"PRAGMA synchronous={self._sync}")
            conn.executescript(SCHEMA)
            self._local.conn = conn
            self._pid = os.getpid()
        return conn

    def __getstate__(self) -> dict:  # picklable for distilabel/Ray workers
        return {"path": str(self.path), "durability": self._sync.lower(), "secret_env": self.secret_env}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["durability"], state.get("secret_env", ()))

    # ------------------------------------------------------------------ primitives
    def get(self, key: str) -> Optional[Any]:
        row = self._conn().execute("SELECT response FROM requests WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def clean(self, obj: Any) -> Any:
        """``obj`` as stored: exactly as received, except the values of secrets in use."""
        return scrub(obj, extra_env=self.secret_env, patterns=False)

    def put(self, key: str, backend: str, model: str, payload: dict, response: Any) -> None:
        # A cache file is an artefact users share: secret values never reach it. Nothing
        # else is rewritten (a response replayed from here equals the one first returned).
        self._conn().execute(
            "INSERT OR IGNORE INTO requests (key, backend, model, request, response, created) VALUES (?,?,?,?,?,?)",
            (key, backend, model, canonical_json(self.clean(payload)), canonical_json(self.clean(response)),
             time.time()),
        )

    def __contains__(self, key: str) -> bool:
        return self._conn().execute("SELECT 1 FROM requests WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def stats(self) -> dict:
        return {"entries": len(self), "hits": self.hits, "misses": self.misses, "path": str(self.path)}

    # ------------------------------------------------------------------ call helpers
    def call(self, backend: str, model: str, payload: dict, fn: Callable[[], Any]) -> tuple[Any, bool]:
        """Return (response, cached). ``fn`` runs only on a miss; its result is
        committed before it is returned, so a caller that sees it can rely on it."""
        key = request_key(backend, model, payload)
        hit = self.get(key)
        if hit is not None:
            self.hits += 1
            return hit, True
        self.misses += 1
        response = self.clean(fn())
        self.put(key, backend, model, payload, response)
        return response, False

    async def acall(
        self, backend: str, model: str, payload: dict, fn: Callable[[], Awaitable[Any]]
    ) -> tuple[Any, bool]:
        """Async twin of ``call`` (SQLite work is sub-millisecond, done inline)."""
        key = request_key(backend, model, payload)
        hit = self.get(key)
        if hit is not None:
            self.hits += 1
            return hit, True
        self.misses += 1
        response = self.clean(await fn())
        self.put(key, backend, model, payload, response)
        return response, False

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
