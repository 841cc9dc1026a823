"""The request cache: every model call in the project goes through it.

A request is keyed by a SHA-256 of its canonical JSON: backend, model, the prompt or
messages, the sampling parameters and the sample count, plus the server (``base_url``,
when one is named) and a declared ``model_revision``, so a retrained checkpoint served
under the same name elsewhere never replays the old model's outputs (never the API key). Each finished
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
from typing import Any, Callable, Optional

from trace_inversion.config.secrets import scrub

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
    the sampling parameters (None values dropped), the sample count and, for API
    clients, ``server`` (the base_url when one is named) and ``model_revision`` (when
    declared); absent or None keys leave the hash of older payloads unchanged."""
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

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# ----------------------------------------------------------------------------- budget ledger
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_ledger (
    scope TEXT PRIMARY KEY,
    cap_nusd INTEGER NOT NULL,
    spent_nusd INTEGER NOT NULL DEFAULT 0,
    reserved_nusd INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
"""
NANO = 1_000_000_000  # amounts are integer nano-dollars: exact sums across processes


def to_nusd(usd: float, up: bool = False) -> int:
    import math

    v = usd * NANO
    return int(math.ceil(v - 1e-6)) if up else int(round(v))


class BudgetLedger:
    """One spending cap for a whole run, shared by every process and replica through a
    table in the request-cache SQLite file (``scope``: the run's name for it).

    Each change is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock), so the
    check "spent + reserved + this reservation <= cap" and the reservation itself are
    atomic across processes. ``try_reserve`` answers ``ok``, ``wait`` (other requests
    in flight hold reservations that may come back) or ``refuse`` (even with nothing in
    flight this request could exceed the cap).
    """

    def __init__(self, path: str | os.PathLike, scope: str):
        self.path = Path(path)
        self.scope = scope
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __getstate__(self) -> dict:
        return {"path": str(self.path), "scope": self.scope}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["scope"])

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=60000")
            _enable_wal(conn)
            # No fsync per commit (WAL + NORMAL): a ledger transaction holds SQLite's write
            # lock for microseconds, so the processes of a run take turns fairly. A crash can
            # lose the last updates, but each run opens its scope afresh.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(LEDGER_SCHEMA)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _txn(self, fn):
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    def open(self, cap_usd: float) -> None:
        """Start the scope afresh (the run's driver, before any step runs): cap set, nothing
        spent or reserved. A budget counts new spending in this run; replays are free."""
        self._txn(lambda c: c.execute(
            "INSERT OR REPLACE INTO budget_ledger (scope, cap_nusd, spent_nusd, reserved_nusd, refused, attempts, updated)"
            " VALUES (?, ?, 0, 0, 0, 0, ?)", (self.scope, to_nusd(cap_usd), time.time())))

    def ensure(self, cap_usd: float) -> None:
        """Join the scope, creating it if no driver opened it (a step used on its own)."""
        self._txn(lambda c: c.execute(
            "INSERT OR IGNORE INTO budget_ledger (scope, cap_nusd, spent_nusd, reserved_nusd, refused, attempts, updated)"
            " VALUES (?, ?, 0, 0, 0, 0, ?)", (self.scope, to_nusd(cap_usd), time.time())))

    def try_reserve(self, amount_nusd: int) -> str:
        # A read first (WAL readers take no lock): a request that has to wait polls without
        # taking SQLite's write lock from the processes that can go ahead.
        row = self._conn().execute("SELECT cap_nusd, spent_nusd, reserved_nusd FROM budget_ledger WHERE scope = ?",
                                   (self.scope,)).fetchone()
        if row is not None and row[1] + row[2] + amount_nusd > row[0] and row[1] + amount_nusd <= row[0]:
            return "wait"

        def go(c):
            row = c.execute("SELECT cap_nusd, spent_nusd, reserved_nusd FROM budget_ledger WHERE scope = ?",
                            (self.scope,)).fetchone()
            if row is None:
                raise RuntimeError(f"budget ledger scope {self.scope!r} was never opened")
            cap, spent, reserved = row
            if spent + reserved + amount_nusd <= cap:
                c.execute("UPDATE budget_ledger SET reserved_nusd = reserved_nusd + ?, attempts = attempts + 1, "
                          "updated = ? WHERE scope = ?", (amount_nusd, time.time(), self.scope))
                return "ok"
            if spent + amount_nusd > cap:
                c.execute("UPDATE budget_ledger SET refused = refused + 1, updated = ? WHERE scope = ?",
                          (time.time(), self.scope))
                return "refuse"
            return "wait"
        return self._txn(go)

    def refuse(self) -> None:
        self._txn(lambda c: c.execute("UPDATE budget_ledger SET refused = refused + 1, updated = ? WHERE scope = ?",
                                      (time.time(), self.scope)))

    def settle(self, reserved_nusd: int, counted_nusd: int) -> None:
        """Release a reservation and record what the attempt cost (0 when not billed)."""
        self._txn(lambda c: c.execute(
            "UPDATE budget_ledger SET reserved_nusd = reserved_nusd - ?, spent_nusd = spent_nusd + ?, updated = ? "
            "WHERE scope = ?", (reserved_nusd, counted_nusd, time.time(), self.scope)))

    def state(self) -> dict:
        row = self._conn().execute("SELECT cap_nusd, spent_nusd, reserved_nusd, refused, attempts FROM budget_ledger "
                                   "WHERE scope = ?", (self.scope,)).fetchone()
        if row is None:
            return {}
        cap, spent, reserved, refused, attempts = row
        return {"cap_usd": cap / NANO, "spent_usd": spent / NANO, "reserved_usd": reserved / NANO,
                "refused": refused, "attempts": attempts}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# ----------------------------------------------------------------------------- the `cache` command
def add_parser(subparsers) -> None:
    """The ``cache`` command."""
    p = subparsers.add_parser("cache", help="tool: statistics of a request cache file")
    p.add_argument("path")
    p.set_defaults(func=main)


def main(args) -> int:
    from trace_inversion.cli_options import print_json
    from trace_inversion.errors import UserError

    if not Path(args.path).exists():
        raise UserError(f"no cache at {args.path}")
    print_json(RequestCache(args.path).stats())
    return 0
