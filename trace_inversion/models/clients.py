"""Request clients of the API and toy backends: one paid request at a time, uncached.

``request_client(model_config)`` returns the client a project LLM
(``models.project``) calls on a cache miss: ``async call(messages, seed) ->
CallResult`` with retries and the budget; the one cache path is ``models.CachedModel``
(``make_client(cfg, cache)`` builds that around the registry's LLM). Every successful
response is normalised to ``{"answer", "summary" | "reasoning", "usage",
"finish_reason"}``; failures are returned as ``CallResult(ok=False, error=...)`` with
the reason, never raised, so the caller can route the row to ``failures``.

What is sent: local roles decode with the paper's presets; API targets are sent only the
sampling fields the config sets, and the config refuses, before any call, fields their
service would reject (``config.api_sampling_problems``). An API's reasoning field is
stored as received (``reasoning``) and presented as a summary or a full trace by the
model's ``reasoning_field`` (Responses API summary parts: summary; chat
``reasoning_content`` from DeepSeek or a vLLM/SGLang reasoning parser: trace).

Retries: 429, 5xx, timeouts, connection errors and malformed bodies are retried with
exponential backoff and full jitter; a server's ``Retry-After`` (seconds or HTTP date)
or ``retry-after-ms`` is obeyed up to ``max_retry_wait_s`` (a longer one fails the
request with the reason instead of retrying early); 4xx other than 429 fail at once
(retrying a bad request only pays twice).

Budget: with a cap, every attempt first reserves its worst case (input-token bound x
input price + output cap x output price) in a ledger shared by every process of the run
(``cache.BudgetLedger``), then settles what it cost: the usage of a response, 0 for an
attempt the provider did not bill (429, 5xx, 4xx, no connection), the whole reservation
for one it may have billed without telling (a timeout, a malformed 200 body).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

from trace_inversion.models.cache import NANO, BudgetLedger, RequestCache, to_nusd
from trace_inversion.config import ModelConfig, is_openai_url
from trace_inversion.toy.world import ToyWorld, parse_problem

Messages = list[dict]


@dataclass
class CallResult:
    ok: bool
    response: Optional[dict] = None
    error: Optional[str] = None
    attempts: int = 0
    cached: bool = False
    latency_s: float = 0.0


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: float = 0.0  # paid in this run: responses, plus failed attempts counted as billed
    failed_attempts_cost_usd: float = 0.0  # of which: attempts that failed but may have been billed
    requests: int = 0
    cached_requests: int = 0

    def add(self, usage: dict, cost: float, cached: bool) -> None:
        self.input_tokens += int(usage.get("input_tokens", 0) or 0)
        self.output_tokens += int(usage.get("output_tokens", 0) or 0)
        self.reasoning_tokens += int(usage.get("reasoning_tokens", 0) or 0)
        self.cached_input_tokens += int(usage.get("cached_input_tokens", 0) or 0)
        self.requests += 1
        self.cached_requests += int(cached)
        if not cached:
            self.cost_usd += cost

    def add_failed_attempt(self, cost: float) -> None:
        self.cost_usd += cost
        self.failed_attempts_cost_usd += cost


def chat_payload(cfg: ModelConfig, messages: Messages, seed: Optional[int] = None) -> dict:
    """The cache-key payload of a chat request: messages, sampling parameters (a
    per-request ``seed`` overrides the configured one), the sample count and a declared
    ``model_revision``."""
    s = cfg.sampling
    params = s.model_dump(exclude={"n"})
    if seed is not None:
        params["seed"] = seed
    out = {"messages": messages, "params": params, "n": s.n}
    if cfg.model_revision:
        out["model_revision"] = cfg.model_revision
    return out


def server_id(cfg: ModelConfig) -> Optional[str]:
    """The server a request goes to, for its key: the base_url as named (trailing '/'
    dropped), None for OpenAI's own API."""
    url = cfg.base_url
    if url is None:
        return None
    url = url.rstrip("/")
    if is_openai_url(url) and url.split("://", 1)[-1].lower() == "api.openai.com/v1":
        return None
    return url


def with_retry(payload: dict, retry: int) -> dict:
    """A request's cache-key payload for retry number ``retry`` (``--retry-failed``):
    0 is the original request (keys unchanged), k > 0 a fresh request recorded as such."""
    return dict(payload, retry=retry) if retry else payload


def retry_seed(seed: Optional[int], retry: int) -> Optional[int]:
    """The sampling seed of retry ``retry`` of a request seeded ``seed``."""
    return seed if not retry else (seed or 0) + 1_000_003 * retry


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad request, auth, refusal policy)."""


class RetryableError(Exception):
    def __init__(self, msg: str, retry_after: Optional[float] = None, maybe_billed: bool = False):
        super().__init__(msg)
        self.retry_after = retry_after
        self.maybe_billed = maybe_billed  # the provider may have produced (and billed) a response


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 30.0, retry_after: Optional[float] = None,
                  rng: random.Random | None = None, max_wait: float = 600.0) -> float:
    """How long to wait before retry number ``attempt + 1``.

    A server's ``Retry-After`` is obeyed (plus up to 10% jitter so that clients do not
    return in lockstep, never past ``max_wait``); without one, full-jitter exponential
    backoff capped at ``cap``. (A Retry-After over ``max_wait`` is the caller's to refuse.)
    """
    rng = rng or random
    if retry_after is not None and retry_after >= 0:
        return min(max_wait, retry_after * (1 + 0.1 * rng.random())) if retry_after <= max_wait else max_wait
    return rng.uniform(0, min(cap, base * (2 ** attempt)))


def parse_retry_after(headers) -> Optional[float]:
    """Seconds a server asks to wait: ``retry-after-ms`` (milliseconds), else
    ``Retry-After`` as seconds (floats allowed) or an HTTP date; None when absent or
    unreadable. A date in the past is 0."""
    if headers is None:
        return None
    for name, div in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        v = headers.get(name)
        if v is None:
            continue
        try:
            d = float(v)
        except ValueError:
            continue
        if math.isfinite(d) and d >= 0:
            return d / div
    v = headers.get("retry-after")
    if v:
        try:
            t = email.utils.parsedate_to_datetime(v)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if t is not None:
            return max(0.0, t.timestamp() - time.time())
    return None


class BudgetExceeded(Exception):
    pass


class Budget:
    """A spending cap for the requests of a run.

    Every attempt reserves its worst-case cost before it is sent (``reserve``) and
    settles what it cost when it ends (``settle``); an attempt whose reservation does
    not fit next to what is spent and reserved waits for reservations in flight to come
    back, and is refused when it could not fit even then. So spending never exceeds the
    cap, whatever the responses cost. ``Budget.shared(cache_path, cap, scope)`` keeps the
    figures in the request cache's SQLite file (``BudgetLedger``): one cap for every
    process and Ray replica of a run; ``Budget(cap)`` keeps them in this process.
    """

    def __init__(self, cap_usd: Optional[float], ledger: Optional[BudgetLedger] = None):
        self.cap = cap_usd
        self.ledger = ledger if cap_usd is not None else None
        self._spent = 0  # nano-dollars (local figures)
        self._reserved = 0
        self.refused = 0
        self._turn: Optional[asyncio.Lock] = None  # one reserving request of this process at a time (FIFO)
        self._turn_loop = None
        if self.ledger is not None:
            self.ledger.ensure(cap_usd)

    @classmethod
    def shared(cls, cache_path, cap_usd: Optional[float], scope: Optional[str]) -> "Budget":
        """The run's ledger scope ``scope`` in ``cache_path`` (a per-process budget when no
        scope is given)."""
        if cap_usd is None or not scope:
            return cls(cap_usd)
        return cls(cap_usd, BudgetLedger(cache_path, scope))

    @property
    def spent(self) -> float:
        if self.ledger is not None:
            return self.ledger.state().get("spent_usd", 0.0)
        return self._spent / NANO

    @property
    def reserved(self) -> float:
        if self.ledger is not None:
            return self.ledger.state().get("reserved_usd", 0.0)
        return self._reserved / NANO

    def _try_local(self, n: int) -> str:
        cap = to_nusd(self.cap)
        if self._spent + self._reserved + n <= cap:
            self._reserved += n
            return "ok"
        return "refuse" if self._spent + n > cap else "wait"

    async def reserve(self, amount_usd: float, max_wait_s: float = 300.0) -> int:
        """Reserve ``amount_usd`` (rounded up); returns the reservation for ``settle``.
        Raises BudgetExceeded when it cannot fit."""
        if self.cap is None:
            return 0
        n = to_nusd(amount_usd, up=True)
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn_loop is not loop:
            self._turn, self._turn_loop = asyncio.Lock(), loop
        deadline = time.monotonic() + max_wait_s
        delay = 0.002
        # Requests of this process reserve in turn (asyncio.Lock is FIFO), so a waiting
        # process polls the ledger once, not once per request in flight.
        async with self._turn:
            while True:
                verdict = self.ledger.try_reserve(n) if self.ledger is not None else self._try_local(n)
                if verdict == "ok":
                    return n
                if verdict == "refuse" or time.monotonic() > deadline:
                    self.refused += 1
                    if verdict != "refuse" and self.ledger is not None:
                        self.ledger.refuse()
                    raise BudgetExceeded(self._msg())
                await asyncio.sleep(delay)
                delay = min(0.05, delay * 1.5)

    def settle(self, reservation: int, counted_usd: float) -> None:
        """Release ``reservation`` and record ``counted_usd`` as spent."""
        c = to_nusd(counted_usd)
        if self.ledger is not None:
            self.ledger.settle(reservation, c)
            return
        self._reserved -= reservation
        self._spent += c

    def _msg(self) -> str:
        return (f"budget cap reached: spent ${self.spent:.4f} of ${self.cap:.4f}; "
                "raise budget_usd and rerun to continue")


def cost_of(usage: dict, cfg: ModelConfig) -> float:
    """USD for a response's usage at the configured prices (reasoning tokens are billed
    inside output tokens; cached input tokens at the cached-input price when one is set)."""
    out = int(usage.get("output_tokens", 0) or 0)
    inp = int(usage.get("input_tokens", 0) or 0)
    cached = min(inp, int(usage.get("cached_input_tokens", 0) or 0))
    p_cached = cfg.price_input_per_mtok if cfg.price_cached_input_per_mtok is None else cfg.price_cached_input_per_mtok
    return ((inp - cached) * cfg.price_input_per_mtok + cached * p_cached + out * cfg.price_output_per_mtok) / 1e6


def input_token_bound(messages: Messages) -> int:
    """An upper bound on a conversation's input tokens without its tokenizer: byte-level
    BPE tokenizers (OpenAI's, Llama 3's, Qwen's) never make more tokens than UTF-8 bytes;
    plus room for the chat template's special tokens and a provider's own preamble."""
    n = 64
    for m in messages:
        c = m.get("content")
        text = c if isinstance(c, str) else json.dumps(c, ensure_ascii=False)
        n += len((text or "").encode("utf-8")) + 16
    return n


def max_cost(cfg: ModelConfig, messages: Messages) -> Optional[float]:
    """The most one attempt can cost: input-token bound x input price + output cap x
    output price (x samples); None when no output cap is sent (no bound)."""
    mx = cfg.max_output_tokens()
    if mx is None:
        return None
    return (input_token_bound(messages) * cfg.price_input_per_mtok
            + mx * max(1, cfg.sampling.n) * cfg.price_output_per_mtok) / 1e6


def present(response: dict, kind: str) -> dict:
    """A stored API response as the stages read it: its ``reasoning`` (kept as received)
    becomes ``summary`` or ``trace`` by ``kind`` (the model's reasoning_field)."""
    if not isinstance(response, dict) or "reasoning" not in response:
        return response  # toy/local responses (and entries stored before reasoning was kept raw)
    out = dict(response)

    def route(d: dict) -> None:
        r = d.get("reasoning") or None
        d["summary"] = r if kind == "summary" else None
        d["trace"] = r if kind == "trace" else None

    route(out)
    if isinstance(out.get("samples"), list):
        out["samples"] = [dict(s) for s in out["samples"]]
        for smp in out["samples"]:
            route(smp)
    return out


def _maybe_billed(exc: BaseException) -> bool:
    """A transport failure after which the provider may still have produced (and billed)
    the response: not when the connection was never made."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in ("ConnectError", "ClientConnectorError", "ConnectionRefusedError",
                                "ClientConnectorDNSError", "ConnectTimeout"):
            return False
        e = e.__cause__ or e.__context__
    return True


class BaseClient:
    backend = "base"

    def __init__(self, cfg: ModelConfig, rng_seed: int = 0, budget: Optional[Budget] = None):
        self.cfg = cfg
        self.usage = Usage()  # what this client paid: responses and failed attempts (cache hits are counted by the cache layer)
        self.budget = budget or Budget(None)
        self._sem: Optional[asyncio.Semaphore] = None
        self._sem_loop: Optional[asyncio.AbstractEventLoop] = None
        self._rng = random.Random(rng_seed)

    # subclasses: payload for the cache key, and the raw call
    def payload(self, messages: Messages, seed: Optional[int] = None) -> dict:
        return chat_payload(self.cfg, messages, seed)

    async def _call(self, messages: Messages, seed: Optional[int] = None) -> dict:
        raise NotImplementedError

    def reservation(self, messages: Messages) -> float:
        """What an attempt reserves from the budget (its worst case)."""
        c = max_cost(self.cfg, messages)
        if c is None:
            if self.budget.cap is not None:
                raise PermanentError("budget_usd needs an output-token cap to bound a request's cost; "
                                     "fix: set sampling.max_new_tokens")
            return 0.0
        return c

    async def call(self, messages: Messages, seed: Optional[int] = None) -> CallResult:
        """One paid request, not cached (``models.CachedModel`` is the one cache path and
        calls this only on a miss): retries with backoff, the budget reserved per attempt.
        ``seed`` (for resampling) overrides the sampling seed."""
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            # Steps run one event loop per batch; a semaphore belongs to one loop.
            self._sem, self._sem_loop = asyncio.Semaphore(self.cfg.concurrency), loop
        t0 = time.monotonic()
        attempts = 0
        cfg = self.cfg

        async def paid_call() -> dict:
            # Only a cache miss reaches here. Each attempt reserves its worst case while it
            # is in flight and settles what it cost; backoff waits hold no reservation.
            nonlocal attempts
            worst = self.reservation(messages)
            while True:
                async with self._sem:
                    reservation = await self.budget.reserve(worst, max_wait_s=2 * cfg.timeout_s + 30)
                    attempts += 1
                    err: Optional[RetryableError] = None
                    try:
                        response = await asyncio.wait_for(self._call(messages, seed), timeout=cfg.timeout_s)
                    except asyncio.TimeoutError:
                        err = RetryableError(f"timeout after {cfg.timeout_s}s", maybe_billed=True)
                    except RetryableError as e:
                        err = e
                    except asyncio.CancelledError:
                        self.budget.settle(reservation, worst)  # in flight when cancelled: it may be billed
                        raise
                    except BaseException:
                        self.budget.settle(reservation, 0.0)  # a 4xx: refused, not billed
                        raise
                    if err is None:
                        self.budget.settle(reservation, cost_of(response.get("usage", {}), cfg))
                        return response
                    counted = worst if err.maybe_billed else 0.0
                    if counted:
                        self.usage.add_failed_attempt(counted)
                    self.budget.settle(reservation, counted)
                if attempts > cfg.max_retries:
                    raise PermanentError(f"gave up after {attempts} attempts: {err}")
                ra = getattr(err, "retry_after", None)
                if ra is not None and ra > cfg.max_retry_wait_s:
                    raise PermanentError(f"the server asked to retry after {ra:.0f}s, more than max_retry_wait_s "
                                         f"({cfg.max_retry_wait_s:.0f}s); rerun later or raise max_retry_wait_s "
                                         f"(after {attempts} attempts: {err})")
                await asyncio.sleep(backoff_delay(attempts - 1, retry_after=ra, rng=self._rng,
                                                  max_wait=cfg.max_retry_wait_s))

        try:
            response = await paid_call()
        except (PermanentError, BudgetExceeded) as e:
            return CallResult(False, error=str(e), attempts=attempts, latency_s=time.monotonic() - t0)
        self.usage.add(response.get("usage", {}), cost_of(response.get("usage", {}), self.cfg), False)
        return CallResult(True, response=response, attempts=attempts, latency_s=time.monotonic() - t0)


    async def aclose(self) -> None:
        pass


class ToyTargetClient(BaseClient):
    """The programmatic target/surrogate/compressor: offline, free, deterministic."""

    backend = "toy"

    def __init__(self, cfg: ModelConfig, world: Optional[ToyWorld] = None, **kw):
        super().__init__(cfg, **kw)
        self.world = world or ToyWorld()

    async def _call(self, messages: Messages, seed: Optional[int] = None) -> dict:
        text = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        if self.cfg.model == "toy-inverter":
            return self._invert(text, seed)
        p = parse_problem(text)
        if self.cfg.model == "toy-compressor":
            summary = self.world.compress(text)
            return {"answer": summary, "summary": None, "usage": _toy_usage(text, summary), "finish_reason": "stop"}
        if p is None:
            return {"answer": "I can't help with that request.", "summary": "", "usage": _toy_usage(text, ""),
                    "finish_reason": "stop"}
        if self.cfg.model == "toy-surrogate":
            out = self.world.surrogate_response(p)
            return {"answer": out, "summary": None, "usage": _toy_usage(text, out), "finish_reason": "stop"}
        r = self.world.target_response(p)
        usage = _toy_usage(text, r["answer"])
        usage["reasoning_tokens"] = len(r["hidden_trace"].split()) * 3
        usage["output_tokens"] += usage["reasoning_tokens"]
        # "trace": the hidden trace, exposed only because the toy target is open (oracle
        # data for overlap metrics and the target-traces student); API targets hide it.
        return {"answer": r["answer"], "summary": r["summary"], "trace": r["hidden_trace"], "usage": usage,
                "finish_reason": "stop"}

    def _invert(self, prompt: str, seed: Optional[int]) -> dict:
        from trace_inversion.prompts import parse_inverter_prompt

        parts = parse_inverter_prompt(prompt)
        p = parse_problem(parts.get("problem") or "")
        if p is None:
            return {"answer": "", "summary": None, "usage": _toy_usage(prompt, ""), "finish_reason": "stop"}
        trace = self.world.invert(p, parts.get("answer"), parts.get("summary"), seed)
        return {"answer": trace, "summary": None, "usage": _toy_usage(prompt, trace), "finish_reason": "stop"}


def _toy_usage(inp: str, out: str) -> dict:
    return {"input_tokens": len(inp.split()), "output_tokens": len(out.split()), "reasoning_tokens": 0}


def api_key_for(cfg: ModelConfig) -> Optional[str]:
    """The api_key handed to the OpenAI SDK. ``api_key_env`` set: that variable. Unset, for
    OpenAI's own API (no base_url, or api.openai.com): None, so the SDK does its own lookup
    (``OPENAI_API_KEY``; ``OPENAI_BASE_URL`` too when base_url is unset). Unset, for any
    other server: a placeholder ("EMPTY", which local vLLM/SGLang servers accept), so an
    OpenAI key is never sent to another host unless a config names it."""
    import os

    if cfg.api_key_env:
        return os.environ.get(cfg.api_key_env) or None
    if is_openai_url(cfg.base_url):
        return None
    return "EMPTY"


def credential_problems(cfg: ModelConfig, role: str = "target") -> list[str]:
    """Why the model's requests would all be refused for want of a key (checked before any
    call): an ``api_key_env`` naming an unset variable, or OpenAI's API with no key."""
    import os

    if cfg.backend not in ("openai-responses", "openai-chat"):
        return []
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        return [f"models.{role}.api_key_env: the environment variable {cfg.api_key_env} is not set; fix: export "
                f"{cfg.api_key_env}=<your key> (or unset api_key_env to use the SDK's OPENAI_API_KEY lookup)"]
    if not cfg.api_key_env and is_openai_url(cfg.base_url) and not (
            os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_ADMIN_KEY")):
        return [f"models.{role}: OpenAI's API needs a key and OPENAI_API_KEY is not set; fix: export "
                "OPENAI_API_KEY=<your key>, or name another variable with api_key_env"]
    return []


class _OpenAIBase(BaseClient):
    def __init__(self, cfg: ModelConfig, **kw):
        super().__init__(cfg, **kw)
        self._client = None

    def client(self):
        if self._client is None:
            import openai
            from openai import AsyncOpenAI, DefaultAioHttpClient

            # aiohttp transport: httpcore's pool scans every connection for every
            # request, which made 64 concurrent requests CPU-bound at ~1/4 of ideal.
            kw = {} if self.cfg.base_url is None else {"base_url": self.cfg.base_url}
            try:
                self._client = AsyncOpenAI(
                    api_key=api_key_for(self.cfg), max_retries=0, timeout=self.cfg.timeout_s,
                    http_client=DefaultAioHttpClient(timeout=self.cfg.timeout_s), **kw)
            except openai.OpenAIError as e:  # e.g. no key: every request would be refused
                raise PermanentError(f"cannot create the OpenAI client: {e}") from None
        return self._client

    def key_payload(self, body: dict, messages: Messages, seed: Optional[int]) -> dict:
        """The cache-key payload: the request body as sent (less what does not change
        the output: ``store``), the server and a declared model revision."""
        params = {k: v for k, v in body.items() if k not in ("messages", "input", "store")}
        return {"messages": messages, "params": params, "n": self.cfg.sampling.n, "attempt_seed": seed,
                "server": server_id(self.cfg), "model_revision": self.cfg.model_revision}

    async def _guarded(self, coro) -> Any:
        import openai

        try:
            return await coro
        except openai.RateLimitError as e:
            raise RetryableError("429 rate limited", _retry_after(e.response)) from None
        except openai.InternalServerError as e:
            raise RetryableError(f"{e.status_code} server error", _retry_after(e.response)) from None
        except openai.APITimeoutError as e:
            raise RetryableError(f"{type(e).__name__}", maybe_billed=True) from None
        except openai.APIConnectionError as e:
            raise RetryableError(f"{type(e).__name__}", maybe_billed=_maybe_billed(e)) from None
        except openai.APIStatusError as e:
            if e.status_code in (408, 409) or e.status_code >= 500:
                raise RetryableError(f"{e.status_code}", _retry_after(e.response)) from None
            raise PermanentError(f"HTTP {e.status_code}: {str(e.message)[:300]}") from None
        except (json.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
            # a 200 whose body cannot be read: the provider produced (and billed) something
            raise RetryableError(f"malformed response: {type(e).__name__}", maybe_billed=True) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _retry_after(response) -> Optional[float]:
    try:
        return parse_retry_after(response.headers)
    except AttributeError:
        return None


class OpenAIResponsesClient(_OpenAIBase):
    """OpenAI Responses API; answer = output text, reasoning = the reasoning summary parts
    (a summary: ``reasoning_field`` defaults to summary)."""

    backend = "openai-responses"

    def body(self, messages: Messages) -> dict:
        """The request body: only what the config sets, plus the output cap and ``store``."""
        c, s = self.cfg, self.cfg.sampling
        body: dict = {"input": messages, "max_output_tokens": c.max_output_tokens(),
                      "store": bool(c.store) if c.store is not None else False}
        if c.reasoning_effort or c.reasoning_summary:
            body["reasoning"] = {k: v for k, v in {"effort": c.reasoning_effort, "summary": c.reasoning_summary}.items()
                                 if v}
        for name in ("temperature", "top_p"):
            if getattr(s, name) is not None:
                body[name] = getattr(s, name)
        body.update(c.extra_body or {})
        return body

    def payload(self, messages: Messages, seed: Optional[int] = None) -> dict:
        # a per-request seed (resampling) is part of the key; the Responses API takes none
        return self.key_payload(self.body(messages), messages, seed)

    async def _call(self, messages: Messages, seed: Optional[int] = None) -> dict:
        # The body goes as extra_body and the reply is parsed from raw JSON: the SDK's
        # typed transform and model construction cost ~3 ms CPU per request, which
        # capped 64-way concurrency well below the server's rate on a small machine.
        raw = await self._guarded(self.client().responses.with_raw_response.create(
            model=self.cfg.model, extra_body=self.body(messages)))
        return await self._guarded(_parse_raw(raw, parse_responses_output))


async def _parse_raw(raw, parser) -> dict:
    data = json.loads(raw.http_response.content)
    return parser(data)


def _usage(u: Optional[dict], inp: str, out: str) -> dict:
    u = u or {}
    return {
        "input_tokens": u.get(inp, 0) or 0,
        "output_tokens": u.get(out, 0) or 0,
        "reasoning_tokens": (u.get(out + "_details") or {}).get("reasoning_tokens", 0) or 0,
        "cached_input_tokens": (u.get(inp + "_details") or {}).get("cached_tokens", 0) or 0,
    }


def parse_responses_output(r: dict) -> dict:
    """Normalise a Responses API body: answer (output_text parts), reasoning (the
    summary_text parts of every reasoning item, joined in order), usage (with cached
    input tokens), and for an incomplete response its ``incomplete_reason``
    (max_output_tokens -> finish_reason "length", content_filter -> "content_filter")."""
    if not isinstance(r, dict) or not isinstance(r.get("output"), list):
        raise ValueError("response body has no output list")
    parts, texts = [], []
    for item in r["output"]:
        if item.get("type") == "reasoning":
            parts += [s["text"] for s in item.get("summary") or [] if s.get("text")]
        elif item.get("type") == "message":
            texts += [c["text"] for c in item.get("content") or [] if c.get("type") == "output_text"]
    reason = None
    if r.get("status") == "incomplete":
        reason = (r.get("incomplete_details") or {}).get("reason") or "unknown"
        finish = {"max_output_tokens": "length"}.get(reason, reason)
    else:
        finish = "stop"
    return {"answer": "".join(texts), "reasoning": "\n\n".join(parts), "usage": _usage(r.get("usage"), "input_tokens",
            "output_tokens"), "finish_reason": finish, "incomplete_reason": reason, "response_id": r.get("id")}


class OpenAIChatClient(_OpenAIBase):
    """Any OpenAI-compatible chat server (vLLM, SGLang, DeepSeek-style, OpenAI's chat API);
    reasoning = ``reasoning_content`` (a full trace: ``reasoning_field`` defaults to trace)."""

    backend = "openai-chat"

    def body(self, messages: Messages, seed: Optional[int] = None) -> dict:
        """The request body: only the sampling fields the config sets (plus a per-request
        seed), the output cap when there is one, ``store`` when set, and extra_body."""
        c, s = self.cfg, self.cfg.sampling
        body: dict = {"messages": messages}
        for name in ("temperature", "top_p"):
            if getattr(s, name) is not None:
                body[name] = getattr(s, name)
        mx = c.max_output_tokens()
        if mx is not None:
            # OpenAI's reasoning models (and its API, where max_tokens is deprecated) take
            # max_completion_tokens; other servers all read max_tokens.
            body["max_completion_tokens" if c.is_reasoning_model or is_openai_url(c.base_url) else "max_tokens"] = mx
        if s.n != 1:
            body["n"] = s.n
        seed = seed if seed is not None else s.seed
        if seed is not None:
            body["seed"] = seed
        if c.store is not None:
            body["store"] = c.store
        body.update(c.extra_body or {})
        return body

    def payload(self, messages: Messages, seed: Optional[int] = None) -> dict:
        return self.key_payload(self.body(messages, seed), messages, None)

    async def _call(self, messages: Messages, seed: Optional[int] = None) -> dict:
        raw = await self._guarded(self.client().chat.completions.with_raw_response.create(
            model=self.cfg.model, messages=[], extra_body=self.body(messages, seed)))
        return await self._guarded(_parse_raw(raw, parse_chat_output))


def parse_chat_output(r: dict) -> dict:
    """Normalise a chat-completions body; ``reasoning`` is ``reasoning_content`` (or
    ``reasoning``) when the server exposes one. n > 1 samples go in ``samples``."""
    if not isinstance(r, dict) or not r.get("choices"):
        raise ValueError("no choices in response")
    answers, reasonings, finishes = [], [], []
    for c in r["choices"]:
        msg = c.get("message") or {}
        answers.append(msg.get("content") or "")
        reasonings.append(msg.get("reasoning_content") or msg.get("reasoning") or None)
        finishes.append(c.get("finish_reason"))
    out = {"answer": answers[0], "reasoning": reasonings[0],
           "usage": _usage(r.get("usage"), "prompt_tokens", "completion_tokens"), "finish_reason": finishes[0]}
    if len(answers) > 1:
        out["samples"] = [{"answer": a, "reasoning": s, "finish_reason": f}
                          for a, s, f in zip(answers, reasonings, finishes)]
    return out


def make_client(cfg: ModelConfig, cache: RequestCache, world: Optional[ToyWorld] = None,
                budget: Optional[Budget] = None):
    """The model of ``cfg`` behind the one request cache (``models.CachedModel``): a
    client with ``query``, ``query_many``, ``query_many_sync``, ``usage`` and ``key``."""
    from trace_inversion.models import CachedModel, llm_from_config

    return CachedModel(llm_from_config(cfg, toy_world=world), cache, budget=budget)


def request_client(cfg: ModelConfig, world: Optional[ToyWorld] = None, budget: Optional[Budget] = None) -> BaseClient:
    """The uncached request client of an API or toy backend (used by the models layer)."""
    if cfg.backend == "toy":
        return ToyTargetClient(cfg, world=world, budget=budget)
    if cfg.backend == "openai-responses":
        return OpenAIResponsesClient(cfg, budget=budget)
    if cfg.backend == "openai-chat":
        return OpenAIChatClient(cfg, budget=budget)
    raise ValueError(f"backend {cfg.backend!r} has no request client here; fix: use toy, openai-responses or openai-chat")
