"""OpenAI's Batch API for many requests at once: half the price, results within 24 h,
resumable across runs, and every result stored in the request cache under the key the
normal (one request at a time) path uses, so the stages read batch results exactly as
they read direct ones.

Use::

    from trace_inversion.models.batch_api import BatchRequest, run_batch
    from trace_inversion.models.clients import (OpenAIResponsesClient, api_key_for, cost_of, make_client,
                                         parse_responses_output)

    direct = make_client(cfg, cache)        # the direct path: its keys and cache payloads
    raw = OpenAIResponsesClient(cfg)        # the body it would send
    reqs = [BatchRequest(key=direct.key(m), body={"model": cfg.model, **raw.body(m)},
                         key_payload=direct.payload(m), model=direct.model_key,
                         backend=direct.backend)
            for m in conversations]
    report = run_batch(reqs, cache=cache, parse=parse_responses_output, endpoint="/v1/responses",
                       base_url=cfg.base_url, api_key=api_key_for(cfg), state_dir=out_dir / "batches",
                       run_tag="my-run/target", poll_s=60, timeout_s=None,
                       cost_fn=lambda u: cost_of(u, cfg))   # full price; x price_factor (0.5) is applied
    report.failures   # {key: reason} for requests with no result

What it does, in order:

1. Requests already in the cache are skipped; nothing left: no API call at all.
2. A lock file in ``state_dir`` keeps two processes of the same ``run_tag`` apart (the
   second waits, then finds the results in the cache).
3. Batches an earlier run submitted (the state file ``state_dir/<run>.batches.json``)
   that hold still-missing requests are picked up, never submitted again.
4. The remaining requests are grouped by model (the service runs one model per batch)
   in batches of at most 50,000 lines / ~190 MB. Each group's tag, ``<run_tag>:<hash of its
   sorted keys>``, is sent as batch metadata ``trace_inversion_tag``; before creating a
   batch the server's batch list is searched for a batch with that tag that is not
   failed or cancelled and not already collected: a batch created by a run that crashed
   before it could record it is adopted, not submitted again. The create call itself is
   never retried blindly (a create that errors is followed by the same lookup).
5. The batch id is recorded in the state file at once (temp file + ``os.replace``), with
   the requests' keys and cache payloads beside it (``<run>-<hash>.requests.jsonl``,
   secrets scrubbed), so a later run can store the results even for requests it was not
   given.
6. Batches are polled (``poll_s``) until completed / failed / expired / cancelled. Each
   finished batch is collected at once: its output and error files are downloaded, every
   200 line is ``parse``d and ``cache.put`` (the cache scrubs secrets), every other line
   becomes a failure with its reason (error file lines, non-200 status codes, requests a
   failed/expired/cancelled batch never ran); the state file marks it collected.
7. ``timeout_s`` reached: the report says which batches are still running
   (``report.pending``); they stay recorded and the next run collects them.

Costs: ``cost_fn(usage) -> USD`` (the normal price of one normalised usage dict, e.g.
``clients.cost_of(u, cfg)``) times ``price_factor`` (0.5, the Batch API's discount) for
every result collected; ``report.usage`` sums the tokens. Batch requests are NOT
reserved in the budget ledger (``cache.BudgetLedger``): a batch is paid as a whole once
submitted, so a caller with a cap must check ``len(requests)`` x worst case beforehand
and may settle ``report.cost_usd`` afterwards.

The local stand-in server (``toy_server``) implements the batch endpoints for tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

TAG_KEY = "trace_inversion_tag"
FINAL = ("completed", "failed", "expired", "cancelled")
MAX_LINES = 50_000
MAX_BYTES = 190 * 1024 * 1024  # the service takes up to 200 MB per input file
ENDPOINTS = ("/v1/responses", "/v1/chat/completions")


@dataclass(frozen=True)
class BatchRequest:
    """One request: ``key`` is the request-cache key the normal path uses for it (the
    caller computes it), ``body`` the JSON body for the endpoint (``model`` is added when
    absent), ``key_payload`` what the normal path stores as the request in the cache."""

    key: str
    body: dict
    key_payload: dict
    model: str
    backend: str


@dataclass
class BatchReport:
    """What one ``run_batch`` call did.

    status: ``nothing_to_do`` (all cached), ``done`` (every batch finished and collected;
        see ``failures``), ``pending`` (``timeout_s`` reached: ``pending`` batches still
        run and the next call collects them) or ``locked`` (another process held the
        lock past ``timeout_s``).
    """

    status: str
    requests: int = 0  # distinct keys asked for
    already_cached: int = 0
    created: list = field(default_factory=list)  # batch ids submitted by this call
    resumed: dict = field(default_factory=dict)  # batch id -> "state_file" | "server_tag"
    pending: list = field(default_factory=list)  # batch ids still running at the timeout
    stored: int = 0  # results put into the cache by this call
    failures: dict = field(default_factory=dict)  # key -> reason (no result in the cache)
    usage: dict = field(default_factory=dict)  # summed normalised usage of the results collected
    cost_usd: float = 0.0  # at the batch price (cost_fn x price_factor)
    cost_full_price_usd: float = 0.0  # the same results at the normal price
    api_calls: int = 0
    state_file: Optional[str] = None
    messages: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- files
def _slug(run_tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_tag)[:80] + "-" + hashlib.sha256(run_tag.encode()).hexdigest()[:8]


def _keys_hash(keys: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def batch_tag(run_tag: str, keys: Iterable[str]) -> str:
    """The metadata tag of the batch holding ``keys`` (at most 512 characters)."""
    return f"{run_tag[:400]}:{_keys_hash(keys)}"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power loss
        dfd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class _State:
    """The state file: ``{"run_tag", "batches": {id: {tag, requests_file, n, model, endpoint,
    status, collected, source, created_at}}}``."""

    def __init__(self, state_dir: Path, run_tag: str):
        self.dir = state_dir
        self.slug = _slug(run_tag)
        self.path = state_dir / f"{self.slug}.batches.json"
        self.data = {"run_tag": run_tag, "batches": {}}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            self.data.setdefault("batches", {})

    @property
    def batches(self) -> dict:
        return self.data["batches"]

    def save(self) -> None:
        _atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())

    def requests_file(self, khash: str) -> Path:
        return self.dir / f"{self.slug}-{khash}.requests.jsonl"

    def write_requests(self, khash: str, reqs: list[BatchRequest], clean: Callable[[Any], Any]) -> str:
        path = self.requests_file(khash)
        if not path.exists():
            lines = (json.dumps({"key": r.key, "backend": r.backend, "model": r.model,
                                 "key_payload": clean(r.key_payload)}, sort_keys=True) for r in reqs)
            _atomic_write(path, ("\n".join(lines) + "\n").encode())
        return path.name

    def read_requests(self, entry: dict) -> list[dict]:
        path = self.dir / entry["requests_file"]
        if not path.exists():
            return []
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


@contextlib.contextmanager
def _locked(path: Path, timeout_s: Optional[float]):
    fh = open(path, "a+")
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.2)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


# ----------------------------------------------------------------------------- the API
class _Api:
    """The few calls made, each counted."""

    def __init__(self, client):
        self.client = client
        self.calls = 0

    def upload(self, name: str, data: bytes) -> str:
        self.calls += 1
        return self.client.files.create(file=(name, data, "application/jsonl"), purpose="batch").id

    def create(self, file_id: str, endpoint: str, metadata: dict):
        self.calls += 1
        # never retried by the SDK: a create whose answer is lost may have created the batch
        return self.client.with_options(max_retries=0).batches.create(
            input_file_id=file_id, endpoint=endpoint, completion_window="24h", metadata=metadata)

    def retrieve(self, batch_id: str):
        self.calls += 1
        return self.client.batches.retrieve(batch_id)

    def content(self, file_id: str) -> str:
        self.calls += 1
        return self.client.files.content(file_id).content.decode("utf-8")

    def find_tagged(self, tag: str, skip: set, limit: int):
        """The newest batch tagged ``tag`` that is neither failed, cancelled nor in ``skip``."""
        page = None
        seen = 0
        while True:
            self.calls += 1
            page = self.client.batches.list(limit=100) if page is None else page.get_next_page()
            for b in page.data:
                seen += 1
                if ((b.metadata or {}).get(TAG_KEY) == tag and b.status not in ("failed", "cancelling", "cancelled")
                        and b.id not in skip):
                    return b
            if seen >= limit or not page.has_next_page():
                return None


def _make_client(base_url: Optional[str], api_key: Optional[str], timeout: float):
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY"), timeout=timeout,
                         max_retries=2)


def _norm_usage(parsed: Any, body: Any) -> dict:
    u = parsed.get("usage") if isinstance(parsed, dict) else None
    if isinstance(u, dict):
        return {k: int(u.get(k, 0) or 0) for k in ("input_tokens", "output_tokens", "reasoning_tokens",
                                                  "cached_input_tokens")}
    raw = (body or {}).get("usage") or {}
    inp, out = ("input_tokens", "output_tokens") if "input_tokens" in raw else ("prompt_tokens", "completion_tokens")
    return {"input_tokens": int(raw.get(inp, 0) or 0), "output_tokens": int(raw.get(out, 0) or 0),
            "reasoning_tokens": int((raw.get(out + "_details") or {}).get("reasoning_tokens", 0) or 0),
            "cached_input_tokens": int((raw.get(inp + "_details") or {}).get("cached_tokens", 0) or 0)}


def _line_reason(resp: Any, err: Any) -> str:
    if isinstance(err, dict) and (err.get("code") or err.get("message")):
        return f"{err.get('code') or 'error'}: {err.get('message') or ''}".strip()
    if isinstance(resp, dict):
        body = resp.get("body") or {}
        e = body.get("error") if isinstance(body, dict) else None
        msg = (e or {}).get("message") if isinstance(e, dict) else None
        return f"HTTP {resp.get('status_code')}: {msg or json.dumps(body)[:300]}"
    return "no response and no error for this request"


def _batch_reason(b) -> str:
    errs = [e.message or e.code or "" for e in ((b.errors.data or []) if b.errors else [])]
    return f"batch {b.id} {b.status}" + (f": {'; '.join(errs)[:500]}" if errs else "")


def _line(r: BatchRequest, endpoint: str) -> bytes:
    body = dict(r.body)
    body.setdefault("model", r.model)
    return (json.dumps({"custom_id": r.key, "method": "POST", "url": endpoint, "body": body},
                       ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _chunks(reqs: list[BatchRequest], endpoint: str, max_lines: int, max_bytes: int) -> list[tuple[list, bytes]]:
    by_model: dict[str, list] = {}
    for r in sorted(reqs, key=lambda r: r.key):
        by_model.setdefault(str(r.body.get("model", r.model)), []).append(r)
    out = []
    for model in sorted(by_model):
        cur, data = [], b""
        for r in by_model[model]:
            line = _line(r, endpoint)
            if cur and (len(cur) >= max_lines or len(data) + len(line) > max_bytes):
                out.append((cur, data))
                cur, data = [], b""
            cur.append(r)
            data += line
        if cur:
            out.append((cur, data))
    return out


def run_batch(requests: list[BatchRequest], *, cache, parse: Callable[[dict], dict], state_dir: str | os.PathLike,
              run_tag: str, endpoint: str = "/v1/responses", base_url: Optional[str] = None,
              api_key: Optional[str] = None, client_factory: Optional[Callable[[], Any]] = None,
              poll_s: float = 30.0, timeout_s: Optional[float] = None, price_factor: float = 0.5,
              cost_fn: Optional[Callable[[dict], float]] = None, max_lines: int = MAX_LINES,
              max_bytes: int = MAX_BYTES, lookup_limit: int = 1000, http_timeout_s: float = 120.0,
              on_event: Optional[Callable[[str, dict], None]] = None) -> BatchReport:
    """Send ``requests`` through the Batch API and store the results in ``cache``
    (a ``cache.RequestCache``); see the module docstring. ``parse(response_body)`` turns
    a 200 line's body into what the cache stores (``clients.parse_responses_output`` /
    ``parse_chat_output``); ``client_factory()`` -> an ``openai.OpenAI`` client, else one
    is made from ``base_url``/``api_key`` (default ``OPENAI_API_KEY``). ``timeout_s``:
    how long to wait for the batches (None: until they finish). ``on_event(name, info)``
    is called at ``uploaded``, ``created`` (before the id is recorded), ``recorded``,
    ``polled`` and ``collected``."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    emit = on_event or (lambda name, info: None)
    wanted: dict[str, BatchRequest] = {}
    for r in requests:
        wanted.setdefault(r.key, r)
    report = BatchReport(status="nothing_to_do", requests=len(wanted))
    missing = {k for k in wanted if k not in cache}
    report.already_cached = len(wanted) - len(missing)
    if not missing:
        return report
    sdir = Path(state_dir)
    sdir.mkdir(parents=True, exist_ok=True)
    state = _State(sdir, run_tag)
    report.state_file = str(state.path)
    with _locked(sdir / f"{state.slug}.lock", timeout_s) as got:
        if not got:
            report.status = "locked"
            report.messages.append(f"another process holds {sdir / (state.slug + '.lock')}; rerun later")
            return report
        state = _State(sdir, run_tag)  # as the previous holder left it
        missing = {k for k in missing if k not in cache}
        report.already_cached = len(wanted) - len(missing)
        if not missing:
            return report
        api = _Api(client_factory() if client_factory else _make_client(base_url, api_key, http_timeout_s))
        try:
            _run(report, api, state, wanted, missing, cache, parse, endpoint, poll_s, timeout_s, price_factor,
                 cost_fn, max_lines, max_bytes, lookup_limit, emit)
        finally:
            report.api_calls = api.calls
    return report


def _run(report: BatchReport, api: _Api, state: _State, wanted: dict, missing: set, cache, parse, endpoint: str,
         poll_s: float, timeout_s: Optional[float], price_factor: float, cost_fn, max_lines: int, max_bytes: int,
         lookup_limit: int, emit) -> None:
    import openai

    t0 = time.monotonic()
    live: dict[str, Any] = {}  # batch id -> last Batch object, for the batches this call waits on
    covered: set = set()

    # 1. batches earlier runs submitted that hold requests still missing
    for bid, e in list(state.batches.items()):
        if e.get("collected"):
            continue
        keys = {x["key"] for x in state.read_requests(e)}
        if not keys & missing:
            continue
        try:
            b = api.retrieve(bid)
        except openai.NotFoundError:
            e.update(collected=True, status="not_found")
            state.save()
            report.messages.append(f"batch {bid} recorded in {state.path.name} is unknown to the server: its "
                                   "requests are submitted again")
            continue
        live[bid] = b
        covered |= keys
        report.resumed[bid] = "state_file"
        report.messages.append(f"picked up batch {bid} ({b.status}) submitted by an earlier run; not submitted again")

    # 2. the rest: adopt a tagged batch a crashed run created, or submit
    todo = [wanted[k] for k in sorted(missing - covered)]
    skip = {bid for bid, e in state.batches.items() if e.get("collected")}
    for group, data in _chunks(todo, endpoint, max_lines, max_bytes):
        keys = [r.key for r in group]
        khash = _keys_hash(keys)
        tag = batch_tag(state.data["run_tag"], keys)
        entry = {"tag": tag, "n": len(group), "model": str(group[0].body.get("model", group[0].model)),
                 "endpoint": endpoint, "collected": False}
        entry["requests_file"] = state.write_requests(khash, group, cache.clean)
        b = api.find_tagged(tag, skip, lookup_limit)
        if b is not None:
            entry["source"] = "server_tag"
            report.resumed[b.id] = "server_tag"
            report.messages.append(f"adopted batch {b.id} ({b.status}) tagged {tag}: an earlier run created it "
                                   "without recording it; not submitted again")
        else:
            file_id = api.upload(f"{state.slug}-{khash}.jsonl", data)
            emit("uploaded", {"file_id": file_id, "tag": tag})
            try:
                b = api.create(file_id, endpoint, {TAG_KEY: tag})
            except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError):
                b = api.find_tagged(tag, skip, lookup_limit)  # created after all?
                if b is None:
                    raise
            entry["source"] = "created"
            report.created.append(b.id)
            emit("created", {"batch_id": b.id, "tag": tag})
        entry.update(status=b.status, created_at=b.created_at)
        state.batches[b.id] = entry
        state.save()
        emit("recorded", {"batch_id": b.id, "state_file": str(state.path)})
        live[b.id] = b

    # 3. wait, collecting each batch as soon as it finishes
    usage = report.usage
    for k in ("input_tokens", "output_tokens", "reasoning_tokens", "cached_input_tokens"):
        usage.setdefault(k, 0)
    while True:
        for bid in list(live):
            b = live[bid]
            if b.status not in FINAL:
                try:
                    b = live[bid] = api.retrieve(bid)
                except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                        openai.RateLimitError) as e:
                    report.messages.append(f"polling {bid}: {type(e).__name__}; retrying")
                    continue
                emit("polled", {"batch_id": bid, "status": b.status})
            if b.status in FINAL:
                _collect(report, api, state, bid, b, wanted, cache, parse, price_factor, cost_fn)
                del live[bid]
                emit("collected", {"batch_id": bid, "status": b.status})
        if not live:
            break
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            report.pending = sorted(live)
            for bid, b in live.items():
                state.batches[bid]["status"] = b.status
            state.save()
            report.messages.append(
                f"timeout after {timeout_s:.0f}s: batch(es) {', '.join(report.pending)} still running; they are "
                f"recorded in {state.path} and the next run collects them (they are not submitted again)")
            report.status = "pending"
            return
        time.sleep(poll_s)
    for k in [k for k in report.failures if k in cache]:  # a result reached the cache after all
        del report.failures[k]
    report.status = "done"


def _collect(report: BatchReport, api: _Api, state: _State, bid: str, b, wanted: dict, cache, parse,
             price_factor: float, cost_fn) -> None:
    entry = state.batches[bid]
    recorded = {x["key"]: x for x in state.read_requests(entry)}
    seen: set = set()
    for fid in (b.output_file_id, b.error_file_id):
        if not fid:
            continue
        for ln in api.content(fid).splitlines():
            if not ln.strip():
                continue
            rec = json.loads(ln)
            key = rec.get("custom_id")
            seen.add(key)
            resp, err = rec.get("response"), rec.get("error")
            if not (isinstance(resp, dict) and resp.get("status_code") == 200 and not err):
                report.failures[key] = _line_reason(resp, err)
                continue
            try:
                parsed = parse(resp.get("body"))
            except Exception as e:  # billed, but unreadable: reported like a malformed direct response
                report.failures[key] = f"unparseable response: {type(e).__name__}: {str(e)[:200]}"
                continue
            u = _norm_usage(parsed, resp.get("body"))
            for k, v in u.items():
                report.usage[k] = report.usage.get(k, 0) + v
            if cost_fn is not None:
                full = float(cost_fn(u))
                report.cost_full_price_usd += full
                report.cost_usd += full * price_factor
            if key in wanted:
                r = wanted[key]
                backend, model, payload = r.backend, r.model, r.key_payload
            elif key in recorded:
                x = recorded[key]
                backend, model, payload = x["backend"], x["model"], x["key_payload"]
            else:
                report.messages.append(f"batch {bid}: a result for an unknown request {key} was dropped")
                continue
            if key not in cache:
                cache.put(key, backend, model, payload, parsed)
                report.stored += 1
            report.failures.pop(key, None)
    for key in recorded:
        if key not in seen and key not in cache:
            report.failures[key] = _batch_reason(b) + ": the request did not run"
    entry.update(status=b.status, collected=True)
    state.save()
    if b.status != "completed":
        report.messages.append(_batch_reason(b))
