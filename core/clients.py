"""Model clients: one interface over every backend, every call through the cache.

``make_client(model_config, cache)`` returns a client with
``async query(messages) -> CallResult`` and ``query_many(list_of_messages)``. Every
successful response is normalised to ``{"answer", "summary", "usage", "finish_reason"}``
and committed to the request cache before it is returned; failures are returned as
``CallResult(ok=False, error=...)`` with the reason, never raised, so the caller can
route the row to ``failures``.

Retries: 429, 5xx, timeouts, connection errors and malformed bodies are retried with
exponential backoff and full jitter, honouring ``Retry-After``; 4xx other than 429
fail at once (retrying a bad request only pays twice).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .cache import RequestCache
from .config import ModelConfig
from .toy_world import ToyWorld, parse_problem

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
    cost_usd: float = 0.0
    requests: int = 0
    cached_requests: int = 0

    def add(self, usage: dict, cost: float, cached: bool) -> None:
        self.input_tokens += int(usage.get("input_tokens", 0) or 0)
        self.output_tokens += int(usage.get("output_tokens", 0) or 0)
        self.reasoning_tokens += int(usage.get("reasoning_tokens", 0) or 0)
        self.requests += 1
        self.cached_requests += int(cached)
        if not cached:
            self.cost_usd += cost


def chat_payload(cfg: ModelConfig, messages: Messages, seed: Optional[int] = None) -> dict:
    """The cache-key payload of a chat request: messages, sampling parameters (a
    per-request ``seed`` overrides the configured one) and the sample count."""
    s = cfg.sampling
    params = s.model_dump(exclude={"n"})
    if seed is not None:
        params["seed"] = seed
    return {"messages": messages, "params": params, "n": s.n}


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
    def __init__(self, msg: str, retry_after: Optional[float] = None):
        super().__init__(msg)
        self.retry_after = retry_after


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 30.0, retry_after: Optional[float] = None,
                  rng: random.Random | None = None) -> float:
    """How long to wait before retry number ``attempt + 1``.

    A server's ``Retry-After`` is obeyed (plus up to 10% jitter so that clients do not
    return in lockstep); without one, full-jitter exponential backoff capped at ``cap``.
    """
    rng = rng or random
    if retry_after is not None and 0 <= retry_after <= 600:
        return retry_after * (1 + 0.1 * rng.random())
    return rng.uniform(0, min(cap, base * (2 ** attempt)))


class BudgetExceeded(Exception):
    pass


class Budget:
    """A spending cap shared by the requests of one run.

    Before a request is sent, its cost is reserved at the largest cost seen so far
    (while nothing has been seen, one request at a time probes the price); a request
    whose reservation would cross the cap is not sent. Actual costs replace the
    reservations as responses land, so spending never exceeds the cap.
    """

    def __init__(self, cap_usd: Optional[float]):
        self.cap = cap_usd
        self.spent = 0.0
        self.reserved = 0.0
        self.max_seen: Optional[float] = None
        self._probe: Optional[asyncio.Lock] = None
        self._probe_loop = None
        self.refused = 0

    async def reserve(self) -> float:
        if self.cap is None:
            return 0.0
        if self.max_seen is None:
            loop = asyncio.get_running_loop()
            if self._probe is None or self._probe_loop is not loop:  # one loop per batch
                self._probe, self._probe_loop = asyncio.Lock(), loop
            await self._probe.acquire()
            if self.max_seen is None:  # still unknown: this request is the probe
                if self.spent >= self.cap:
                    self._probe.release()
                    raise BudgetExceeded(self._msg())
                return -1.0
            self._probe.release()
        est = self.max_seen
        if self.spent + self.reserved + est > self.cap:
            self.refused += 1
            raise BudgetExceeded(self._msg())
        self.reserved += est
        return est

    def settle(self, reservation: float, actual: float, failed: bool = False) -> None:
        if self.cap is None:
            self.spent += actual
            return
        if reservation < 0:  # the probe
            if not failed:
                self.max_seen = actual
            self.spent += actual
            self._probe.release()
            return
        self.reserved -= reservation
        self.spent += actual
        self.max_seen = max(self.max_seen or 0.0, actual)

    def _msg(self) -> str:
        return f"budget cap reached: spent ${self.spent:.4f} of ${self.cap:.4f}; raise budget_usd and rerun to continue"


def cost_of(usage: dict, cfg: ModelConfig) -> float:
    out = int(usage.get("output_tokens", 0) or 0)  # reasoning tokens are billed inside output tokens
    return (int(usage.get("input_tokens", 0) or 0) * cfg.price_input_per_mtok + out * cfg.price_output_per_mtok) / 1e6


class BaseClient:
    backend = "base"

    def __init__(self, cfg: ModelConfig, cache: RequestCache, rng_seed: int = 0, budget: Optional[Budget] = None):
        self.cfg = cfg
        self.cache = cache
        self.usage = Usage()
        self.budget = budget or Budget(None)
        self._sem: Optional[asyncio.Semaphore] = None
        self._sem_loop: Optional[asyncio.AbstractEventLoop] = None
        self._rng = random.Random(rng_seed)

    # subclasses: payload for the cache key, and the raw call
    def payload(self, messages: Messages, seed: Optional[int] = None) -> dict:
        return chat_payload(self.cfg, messages, seed)

    def key(self, messages: Messages, seed: Optional[int] = None, retry: int = 0) -> str:
        from .cache import request_key

        return request_key(self.backend, self.cfg.model, with_retry(self.payload(messages, seed), retry))

    async def _call(self, messages: Messages, seed: Optional[int] = None) -> dict:
        raise NotImplementedError

    async def query(self, messages: Messages, seed: Optional[int] = None, retry: int = 0) -> CallResult:
        """One request; ``seed`` (for resampling) overrides the sampling seed and is
        part of the cache key, as is ``retry`` (see ``with_retry``)."""
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            # Steps run one event loop per batch; a semaphore belongs to one loop.
            self._sem, self._sem_loop = asyncio.Semaphore(self.cfg.concurrency), loop
        t0 = time.monotonic()
        attempts = 0

        async def paid_call() -> dict:
            # Only a cache miss reaches here: reserve budget, call, settle the actual cost.
            reservation = await self.budget.reserve()
            try:
                response = await attempt_loop()
            except BaseException:
                self.budget.settle(reservation, 0.0, failed=True)
                raise
            self.budget.settle(reservation, cost_of(response.get("usage", {}), self.cfg))
            return response

        async def attempt_loop() -> dict:
            nonlocal attempts
            while True:
                attempts += 1
                try:
                    async with self._sem:
                        return await asyncio.wait_for(self._call(messages, seed), timeout=self.cfg.timeout_s)
                except asyncio.TimeoutError:
                    err: Exception = RetryableError(f"timeout after {self.cfg.timeout_s}s")
                except RetryableError as e:
                    err = e
                if attempts > self.cfg.max_retries:
                    raise PermanentError(f"gave up after {attempts} attempts: {err}")
                await asyncio.sleep(backoff_delay(attempts - 1, retry_after=getattr(err, "retry_after", None),
                                                  rng=self._rng))

        try:
            response, cached = await self.cache.acall(self.backend, self.cfg.model,
                                                      with_retry(self.payload(messages, seed), retry), paid_call)
        except (PermanentError, BudgetExceeded) as e:
            return CallResult(False, error=str(e), attempts=attempts, latency_s=time.monotonic() - t0)
        self.usage.add(response.get("usage", {}), cost_of(response.get("usage", {}), self.cfg), cached)
        return CallResult(True, response=response, attempts=attempts, cached=cached, latency_s=time.monotonic() - t0)

    async def query_many(self, batch: list[Messages], seeds: Optional[list[Optional[int]]] = None,
                         retries: Optional[list[int]] = None) -> list[CallResult]:
        seeds = seeds or [None] * len(batch)
        retries = retries or [0] * len(batch)
        return list(await asyncio.gather(*(self.query(m, sd, rt) for m, sd, rt in zip(batch, seeds, retries))))

    def query_many_sync(self, batch: list[Messages], seeds: Optional[list[Optional[int]]] = None,
                        retries: Optional[list[int]] = None) -> list[CallResult]:
        async def go():
            try:
                return await self.query_many(batch, seeds, retries)
            finally:
                await self.aclose()
        return asyncio.run(go())

    async def aclose(self) -> None:
        pass


class ToyTargetClient(BaseClient):
    """The programmatic target/surrogate/compressor: offline, free, deterministic."""

    backend = "toy"

    def __init__(self, cfg: ModelConfig, cache: RequestCache, world: Optional[ToyWorld] = None, **kw):
        super().__init__(cfg, cache, **kw)
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
        from .prompts import parse_inverter_prompt

        parts = parse_inverter_prompt(prompt)
        p = parse_problem(parts.get("problem") or "")
        if p is None:
            return {"answer": "", "summary": None, "usage": _toy_usage(prompt, ""), "finish_reason": "stop"}
        trace = self.world.invert(p, parts.get("answer"), parts.get("summary"), seed)
        return {"answer": trace, "summary": None, "usage": _toy_usage(prompt, trace), "finish_reason": "stop"}


def _toy_usage(inp: str, out: str) -> dict:
    return {"input_tokens": len(inp.split()), "output_tokens": len(out.split()), "reasoning_tokens": 0}


class _OpenAIBase(BaseClient):
    def __init__(self, cfg: ModelConfig, cache: RequestCache, **kw):
        super().__init__(cfg, cache, **kw)
        self._client = None

    def client(self):
        if self._client is None:
            from openai import AsyncOpenAI, DefaultAioHttpClient

            key = self.cfg.api_key() or "EMPTY"  # local servers accept any key
            # aiohttp transport: httpcore's pool scans every connection for every
            # request, which made 64 concurrent requests CPU-bound at ~1/4 of ideal.
            self._client = AsyncOpenAI(
                api_key=key, base_url=self.cfg.base_url, max_retries=0, timeout=self.cfg.timeout_s,
                http_client=DefaultAioHttpClient(timeout=self.cfg.timeout_s),
            )
        return self._client

    async def _guarded(self, coro) -> Any:
        import openai

        try:
            return await coro
        except openai.RateLimitError as e:
            raise RetryableError(f"429 rate limited", _retry_after(e.response)) from None
        except openai.InternalServerError as e:
            raise RetryableError(f"{e.status_code} server error", _retry_after(e.response)) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            raise RetryableError(f"{type(e).__name__}") from None
        except openai.APIStatusError as e:
            if e.status_code in (408, 409) or e.status_code >= 500:
                raise RetryableError(f"{e.status_code}", _retry_after(e.response)) from None
            raise PermanentError(f"HTTP {e.status_code}: {str(e.message)[:200]}") from None
        except (json.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise RetryableError(f"malformed response: {type(e).__name__}") from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _retry_after(response) -> Optional[float]:
    try:
        v = response.headers.get("retry-after")
        return float(v) if v is not None else None
    except (AttributeError, ValueError):
        return None


class OpenAIResponsesClient(_OpenAIBase):
    """OpenAI Responses API; answer = output text, summary = reasoning summary parts."""

    backend = "openai-responses"

    def payload(self, messages: Messages, seed: Optional[int] = None) -> dict:
        s = self.cfg.sampling
        return {"input": messages, "reasoning": {"effort": self.cfg.reasoning_effort, "summary": self.cfg.reasoning_summary},
                "max_output_tokens": s.max_new_tokens, "n": 1, "attempt_seed": seed}

    async def _call(self, messages: Messages, seed: Optional[int] = None) -> dict:
        body: dict = {"input": messages, "max_output_tokens": self.cfg.sampling.max_new_tokens}
        if self.cfg.reasoning_effort or self.cfg.reasoning_summary:
            body["reasoning"] = {k: v for k, v in {"effort": self.cfg.reasoning_effort,
                                                   "summary": self.cfg.reasoning_summary}.items() if v}
        # The body goes as extra_body and the reply is parsed from raw JSON: the SDK's
        # typed transform and model construction cost ~3 ms CPU per request, which
        # capped 64-way concurrency well below the server's rate on a small machine.
        raw = await self._guarded(self.client().responses.with_raw_response.create(
            model=self.cfg.model, extra_body=body))
        return await self._guarded(_parse_raw(raw, parse_responses_output))


async def _parse_raw(raw, parser) -> dict:
    data = json.loads(raw.http_response.content)
    return parser(data)


def parse_responses_output(r: dict) -> dict:
    """Normalise a Responses API body: answer (output_text parts), summary (the
    summary_text parts of every reasoning item, joined in order), usage."""
    if not isinstance(r, dict) or not isinstance(r.get("output"), list):
        raise ValueError("response body has no output list")
    parts, texts = [], []
    for item in r["output"]:
        if item.get("type") == "reasoning":
            parts += [s["text"] for s in item.get("summary") or [] if s.get("text")]
        elif item.get("type") == "message":
            texts += [c["text"] for c in item.get("content") or [] if c.get("type") == "output_text"]
    u = r.get("usage") or {}
    usage = {
        "input_tokens": u.get("input_tokens", 0) or 0,
        "output_tokens": u.get("output_tokens", 0) or 0,
        "reasoning_tokens": (u.get("output_tokens_details") or {}).get("reasoning_tokens", 0) or 0,
    }
    finish = "length" if r.get("status") == "incomplete" else "stop"
    return {"answer": "".join(texts), "summary": "\n\n".join(parts), "usage": usage, "finish_reason": finish,
            "response_id": r.get("id")}


class OpenAIChatClient(_OpenAIBase):
    """Any OpenAI-compatible chat server (vLLM, SGLang, DeepSeek-style)."""

    backend = "openai-chat"

    async def _call(self, messages: Messages, seed: Optional[int] = None) -> dict:
        s = self.cfg.sampling
        body: dict = {"messages": messages, "temperature": s.temperature, "top_p": s.top_p,
                      "max_tokens": s.max_new_tokens, "n": s.n}
        seed = seed if seed is not None else s.seed
        if seed is not None:
            body["seed"] = seed
        if s.top_k != -1:
            body["top_k"] = s.top_k
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        raw = await self._guarded(self.client().chat.completions.with_raw_response.create(
            model=self.cfg.model, messages=[], extra_body=body))
        return await self._guarded(_parse_raw(raw, parse_chat_output))


def parse_chat_output(r: dict) -> dict:
    """Normalise a chat-completions body; the summary is ``reasoning_content`` (or
    ``reasoning``) when the server exposes one. n > 1 samples go in ``samples``."""
    if not isinstance(r, dict) or not r.get("choices"):
        raise ValueError("no choices in response")
    answers, summaries, finishes = [], [], []
    for c in r["choices"]:
        msg = c.get("message") or {}
        answers.append(msg.get("content") or "")
        summaries.append(msg.get("reasoning_content") or msg.get("reasoning") or None)
        finishes.append(c.get("finish_reason"))
    u = r.get("usage") or {}
    usage = {
        "input_tokens": u.get("prompt_tokens", 0) or 0,
        "output_tokens": u.get("completion_tokens", 0) or 0,
        "reasoning_tokens": (u.get("completion_tokens_details") or {}).get("reasoning_tokens", 0) or 0,
    }
    out = {"answer": answers[0], "summary": summaries[0], "usage": usage, "finish_reason": finishes[0]}
    if len(answers) > 1:
        out["samples"] = [{"answer": a, "summary": s, "finish_reason": f} for a, s, f in zip(answers, summaries, finishes)]
    return out


def make_client(cfg: ModelConfig, cache: RequestCache, world: Optional[ToyWorld] = None,
                budget: Optional[Budget] = None) -> BaseClient:
    if cfg.backend == "toy":
        return ToyTargetClient(cfg, cache, world=world, budget=budget)
    if cfg.backend == "openai-responses":
        return OpenAIResponsesClient(cfg, cache, budget=budget)
    if cfg.backend == "openai-chat":
        return OpenAIChatClient(cfg, cache, budget=budget)
    raise ValueError(f"backend {cfg.backend!r} has no request client here; fix: use toy, openai-responses or openai-chat")
